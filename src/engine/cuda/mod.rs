//! The built-in engine on an NVIDIA GPU (CUDA through cudarc), the CPU engine's twin behind the
//! same [`Engine`](super::Engine) calls.
//!
//! Design decision: the GPU runs *packed passes* — any mix of sequences, each a span of new
//! tokens at known positions over a paged KV cache ([`batch`]) — and nothing else. Scoring,
//! prefix sharing, chunked prefill, generation and continuous batching are host-side schedules of
//! such passes, tested on the CPU with a toy model; the device side is one forward pass
//! (`kernels.cu` + cuBLAS, called with one shape per product, in a way checked at load to sum a
//! row the same wherever it sits in a call) whose per-token arithmetic never depends on what else
//! is in the pass.
//!
//! Weights are uploaded once: GGUF blocks dequantized to f16, safetensors bf16/f16 as they are
//! (f32 → bf16); with `exact` everything is f32 (the check against the CPU's exact path).
//! Q/K/V and gate/up are fused into one matrix each (gate and up rows interleaved, so a decode
//! warp holds both), so a layer is four GEMMs; q and k rows of a model whose RoPE pairs are
//! (i, i + hd/2) are permuted so the pairs are (2i, 2i + 1) on the GPU whatever the model.

pub mod args;
pub mod batch;
pub mod cache;
pub mod driver;
mod lt;
pub mod profile;
#[cfg(test)]
mod emu;

use self::args::*;
use self::batch::{BlockPool, Forward, Limits, Packed, RowOut, BLOCK};
use self::driver::{Backend, Cuda, Gemm, Graph, Prec, Timed};
use super::device::{DeviceError, GpuInfo};
use super::kernels::WType;
use super::llama::{Config, Llama, RopeStyle};
use super::session::{GenOptions, Generated, ScoreRequest, ScoreResult};
use super::Matrix;
use std::collections::HashMap;
use std::sync::Mutex;

/// Query rows (token × head of one KV group) per attention block (`ATT_ROWS` in the source).
const ATT_ROWS: usize = 16;
/// Keys per shared-memory tile of the attention kernel (`ATT_BK`).
const ATT_BK: usize = 32;
/// On the scoring kernel, a decode step's attention splits each sequence's keys into at most
/// this many blocks (of a power-of-two length, one tile of `ATT_BK` keys at least), merged in
/// order: enough blocks to keep the GPU busy at batch 1, each with little to walk (the decode
/// kernel's splits are one round of its warps, and no shorter). Split lengths depend on the
/// model only, never on the batch.
const DECODE_SPLITS: usize = 256;
/// Dynamic shared memory of an attention block: a tile's keys [ATT_BK × (hd + 4)], values
/// [ATT_BK × hd] and queries [ATT_ROWS × hd].
fn attention_shared(hd: usize) -> u32 {
    ((ATT_BK * (hd + 4) + ATT_BK * hd + ATT_ROWS * hd) * 4) as u32
}
/// Keys a warp of the decode attention kernel copies and scores at once (`DEC_TILE`).
const DEC_TILE: usize = 32;
/// Warps a block of the decode attention kernel, at most.
const DEC_WARPS: usize = 8;

/// How a decode step's attention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DecodeAttention {
    /// the decode kernel and its warps a block, each warp on its own keys; `None`: the scoring
    /// pass's kernel (warps on rows), where the decode kernel has no body for the head size or
    /// its shared memory is refused
    keys: Option<(Kernel, u32)>,
    /// keys of a sequence a block covers; the blocks' partial softmaxes are merged in order
    split: usize,
}

impl DecodeAttention {
    /// `warps on keys (8 a block), 256-key splits` or `warps on rows, 32-key splits`
    fn name(&self) -> String {
        match self.keys {
            Some((_, w)) => format!("warps on keys ({w} a block), {}-key splits", self.split),
            None => format!("warps on rows, {}-key splits", self.split),
        }
    }
}

/// The scoring kernel's key split in decode steps, for a model of context length `ctx`: at most
/// [`DECODE_SPLITS`] splits, of a power-of-two length, one `ATT_BK` tile at least. Every way a
/// decode step's attention runs splits as finely at most (the merge buffers are sized for it).
fn rows_split(ctx: usize) -> usize {
    (ctx / DECODE_SPLITS).next_power_of_two().max(ATT_BK)
}

/// A decode attention warp's shared memory: a tile's keys, padded by 16 bytes a row, and values,
/// in the cache's type (`elem` bytes).
fn dec_warp_bytes(hd: usize, elem: usize) -> usize {
    DEC_TILE * (2 * hd * elem + 16)
}
/// Dynamic shared memory of a decode attention block of `warps` warps: the queries
/// [ATT_ROWS × hd] f32, then each warp's.
fn dec_shared(hd: usize, elem: usize, warps: u32) -> u32 {
    (ATT_ROWS * hd * 4 + warps as usize * dec_warp_bytes(hd, elem)) as u32
}

/// Threads of a `logits_reduce` block (one vocabulary row): the most a block has, so that a
/// decode step's one row takes few rounds of loads. Fixed, as the log-softmax's summation order
/// follows it.
const REDUCE_THREADS: u32 = 1024;
/// KV cache memory at most.
const KV_MAX_BYTES: usize = 16 << 30;
/// The longest sequence the GPU engine runs (sizes its scratch buffers).
const MAX_CONTEXT: usize = 16384;
/// Tokens per packed pass.
const PASS_TOKENS: usize = 4096;
/// Sequences per packed pass.
const PASS_SEQS: usize = 256;
/// Sequences decoding together.
pub const GEN_SLOTS: usize = 64;
/// Times each shape of the decode product kernel runs on a product (over every layer) when a
/// model loads; the fastest of the repeats counts.
const MV_REPEATS: usize = 3;

/// The matrix products of a decode step; each runs on the [`MvShape`] timed fastest for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// q/k/v of RMSNorm(x), RoPE, the KV cache write
    Qkv,
    /// x += attention output · woᵀ
    Out,
    /// SwiGLU of RMSNorm(x) · (gate, up)ᵀ
    GateUp,
    /// x += activations · downᵀ
    Down,
    /// logits of RMSNorm(x)
    LmHead,
}

impl Product {
    pub const ALL: [Product; 5] = [Product::Qkv, Product::Out, Product::GateUp, Product::Down, Product::LmHead];

    pub fn name(self) -> &'static str {
        match self {
            Product::Qkv => "q/k/v",
            Product::Out => "attention output",
            Product::GateUp => "gate/up",
            Product::Down => "down",
            Product::LmHead => "LM head",
        }
    }

    /// Whether the product adds to its output (the residual stream) rather than writing it.
    fn accumulates(self) -> bool {
        matches!(self, Product::Out | Product::Down)
    }

    /// (weight rows n, inner size k, input, output) for a model of config `c`.
    fn dims(self, c: &Config) -> (usize, usize, i32, i32) {
        let (d, q, kv) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        match self {
            Product::Qkv => (q + 2 * kv, d, MV_NORM, MV_QKV),
            Product::Out => (d, q, MV_PLAIN, MV_F32),
            Product::GateUp => (2 * c.ffn_dim, d, MV_NORM, MV_GLU),
            Product::Down => (d, c.ffn_dim, MV_PLAIN, MV_F32),
            Product::LmHead => (c.vocab, d, MV_NORM, MV_F32),
        }
    }
}

/// How long each shape of the decode product kernel took on one product of a model, for one
/// input row (the mean over the layers' matrices, best of [`MV_REPEATS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MvTiming {
    pub product: Product,
    /// weight rows × inner size
    pub n: usize,
    pub k: usize,
    /// each shape that can make the product's output, and its microseconds
    pub micros: Vec<(MvShape, f64)>,
    /// the fastest, which the decode steps run
    pub chosen: MvShape,
}

/// How a product's GEMM calls run: the backend's ways tried in order and the one kept.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmChoice {
    pub product: Product,
    /// rows of a call × weight rows × inner size
    pub shape: (usize, usize, usize),
    /// each way tried: its name, and whether every row came out the same bits wherever it sat in
    /// the call (an error: why the way could not run)
    pub tried: Vec<(String, Result<bool, String>)>,
    /// the way the passes use; `None` when no way gave the same bits (way 0 runs)
    pub chosen: Option<usize>,
}

/// One transformer block on the device (addresses; shapes in the comments).
struct LayerW {
    attn_norm: u64, // [d] f32
    wqkv: u64,      // [(nh + 2·nkv)·hd × d] wt
    bqkv: u64,      // [(nh + 2·nkv)·hd] f32, or 0
    wo: u64,        // [d × nh·hd] wt
    ffn_norm: u64,  // [d] f32
    wgu: u64,       // [2·ffn × d] wt: gate and up rows interleaved (g0 u0 g1 u1 …)
    wdown: u64,     // [d × ffn] wt
}

/// Activations and index arrays, sized for one pass of [`PASS_TOKENS`] tokens.
struct Buffers {
    x: u64,      // [T × d] f32 residual stream
    hn: u64,     // [T × d] wt normalised input of a GEMM
    qkv: u64,    // [T × qkv_dim] f32
    att: u64,    // [T × nh·hd] wt attention output
    gu: u64,     // [T × 2·ffn] f32, gate and up interleaved
    act: u64,    // [T × ffn] wt
    sel: u64,    // [C × d] wt final-normed wanted rows
    logits: u64, // [C × vocab] f32
    out: u64,    // [w] f64 log-probs, then [w] i32 argmaxes (one download)
    idx: u64,    // [5·T + S + 4·tile_cap + table_cap] i32: a pass's index arrays (one upload; see `IdxAt`)
    part_acc: u64, // [part_rows × hd] f32
    part_ml: u64,  // [part_rows × 2] f32
    counters: u64, // [tile_cap × nkv] i32: the attention's tickets, zero between launches
}

struct Inner {
    gpu: Box<dyn Backend>,
    cfg: Config,
    prec: Prec,
    emb: u64,      // [vocab × d] wt
    lm_head: u64,  // [vocab × d] wt (the embedding when tied)
    out_norm: u64, // [d] f32
    inv_freq: u64, // [hd / 2] f32
    layers: Vec<LayerW>,
    kc: u64, // [layers × blocks × BLOCK × kv_dim] kt
    vc: u64,
    blocks: usize,
    buf: Buffers,
    /// LM-head rows per chunk (C)
    chunk: usize,
    table_cap: usize,
    tile_cap: usize,
    part_rows: usize,
    kv_bytes: usize,
    graphs: HashMap<PassShape, Graph>,
    /// the decode matvec kernel can run this model (its inner dimensions fill 16-byte loads)
    matvec_ok: bool,
    /// the shape each [`Product`] runs on, and what timing them found (empty: not timed)
    mv: [MvShape; 5],
    mv_timing: Vec<MvTiming>,
    /// the backend's way to run each product's GEMM calls (see [`Inner::choose_gemm_ways`])
    ways: [usize; 5],
    gemm_choices: Vec<GemmChoice>,
    graphs_work: bool,
    /// tokens and sequences per pass (at most the buffers' [`PASS_TOKENS`], [`PASS_SEQS`])
    pass: Limits,
    /// how decode steps run their attention
    decode_attn: DecodeAttention,
    /// the one-launch decode step, where it runs here (see [`StepKernel`]); decode steps of up
    /// to this many sequences use it (timed at load against launch by launch; 0: none), unless
    /// forced one way ([`GpuModel::set_one_launch`]); and each step shape's phase table
    step: Option<StepKernel>,
    step_batch: usize,
    step_force: Option<bool>,
    step_tables: HashMap<PassShape, u64>,
    /// rows of the last pass's final LM-head chunk: (first wanted row, count)
    last_chunk: (usize, usize),
    allocs: Vec<u64>,
}

/// The one-launch decode step (`decode_step` in the source): a step's products and attention as
/// phases of one cooperative launch of every block the GPU holds at once, with grid barriers
/// between them. It runs where the decode attention has eight warps and the products' inputs fit
/// its staged shape, and only where timing at load found it faster than launch by launch.
#[derive(Debug, Clone, Copy)]
struct StepKernel {
    kernel: Kernel,
    /// blocks (all resident at once) and their dynamic shared memory: the most any phase asks
    blocks: u32,
    shared: u32,
    /// [2] u32: the grid barrier's arrivals and generation
    bar: u64,
    /// products may run on [`STEP_RING_SHAPE`] (its shared memory fits)
    ring: bool,
    /// the driver records it in a graph (else each step launches its three kernels)
    recorded: bool,
}

/// How [`Inner::enqueue`] runs a decode step's layers and LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepMode {
    /// each product and attention its own launch
    Launches,
    /// as the phases of one `decode_step` launch, from the table at this device address
    OneLaunch(u64),
    /// nothing launched: `enqueue` returns the phases' table
    Table,
}

/// Decode steps timed each way (after a recording step) when a model loads; the fastest counts.
const STEP_REPEATS: usize = 5;
/// The batches (sequences decoding together) at which loading times the one-launch step.
const STEP_BATCHES: [usize; 3] = [1, 8, 32];

/// Where a pass's index arrays lie in [`Buffers::idx`]: one after another, so one copy uploads
/// them all. The offsets follow from the pass's counts only, so a recorded decode step (keyed by
/// its counts) reads each array where the next step of the same counts writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IdxAt {
    tok: u64,     // [n] token ids
    pos: u64,     // [n] positions
    seq_of: u64,  // [n] span of each token
    want: u64,    // [w] packed index of each wanted row
    target: u64,  // [w] target of each wanted row (-1: none)
    blk_off: u64, // [spans] offset of each span's block table
    tiles: u64,   // [tiles × 4] attention tiles
    tables: u64,  // the block tables
}

impl IdxAt {
    fn new(base: u64, n: usize, w: usize, spans: usize, tiles: usize) -> IdxAt {
        // each array starts where the one before it ends, in the order `fill` writes them
        let lens = [n, n, n, w, w, spans, 4 * tiles];
        let mut at = [base; 8];
        for (i, len) in lens.iter().enumerate() {
            at[i + 1] = at[i] + 4 * *len as u64;
        }
        let [tok, pos, seq_of, want, target, blk_off, tiles, tables] = at;
        IdxAt { tok, pos, seq_of, want, target, blk_off, tiles, tables }
    }

    /// The arrays of `p` in this layout, as one host buffer.
    fn fill(p: &Packed) -> Vec<i32> {
        [&p.tok, &p.pos, &p.seq_of, &p.want, &p.target, &p.blk_off, &p.tiles, &p.tables].into_iter().flat_map(|v| v.iter().copied()).collect()
    }
}

/// What one pass is made of: the counts that shape its launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PassShape {
    /// tokens
    n: usize,
    /// wanted rows
    w: usize,
    /// spans (sequences)
    spans: usize,
    /// attention tiles
    tiles: usize,
    /// keys per split of the attention, and splits per tile
    split: usize,
    max_splits: usize,
    /// partial rows per (tile, KV head, split): the most rows a tile has
    row_stride: usize,
    /// a decode step: its products run as the fused matvec kernel (when the sizes allow)
    decode: bool,
}

/// A model resident on a GPU.
pub struct GpuModel {
    inner: Mutex<Inner>,
    /// `cuda:N (name)`
    pub label: String,
    pub prec: Prec,
    /// Largest sequence (tokens) it runs.
    pub max_context: usize,
}

fn cfg_err(label: &str, msg: String) -> DeviceError {
    DeviceError::Cuda { device: label.into(), what: "loading the model".into(), detail: msg }
}

/// Whether the kernels run a model of `c`'s heads (checked before they are compiled for it).
fn check_heads(c: &Config, label: &str) -> Result<(), DeviceError> {
    let group = c.n_heads / c.n_kv_heads.max(1);
    if !c.head_dim.is_multiple_of(32) || c.head_dim > 256 || group > ATT_ROWS {
        return Err(cfg_err(label, format!("the GPU kernels need head_dim a multiple of 32 up to 256 and at most {ATT_ROWS} query heads per KV head (this model: head_dim {}, {group})", c.head_dim)));
    }
    Ok(())
}

/// The storage type for a model's weights on the GPU.
pub fn precision_for(model: &Llama) -> Prec {
    if model.exact {
        return Prec::F32;
    }
    let l = &model.layers[0];
    let wide = [&l.wq, &l.w_gate, &model.tok_embd].iter().any(|m| matches!(m.ty, WType::BF16 | WType::F32));
    if wide {
        Prec::Bf16
    } else {
        Prec::F16
    }
}

/// Where row `i` of a head (of `head_dim` rows) goes when RoPE's pairs (i, i + hd/2) are laid out
/// as (2i, 2i + 1).
fn interleaved_row(i: usize, head_dim: usize) -> usize {
    let (head, j, half) = (i / head_dim, i % head_dim, head_dim / 2);
    head * head_dim + if j < half { 2 * j } else { 2 * (j - half) + 1 }
}

/// `m` as rows of `prec` bytes, converted on the CPU (dequantized first when needed).
fn weight_bytes(m: &Matrix, prec: Prec, rows: std::ops::Range<usize>) -> Vec<u8> {
    let same = matches!((m.ty, prec), (WType::F32, Prec::F32) | (WType::F16, Prec::F16) | (WType::BF16, Prec::Bf16));
    let es = prec.bytes();
    if same {
        let raw = m.data.as_slice();
        return raw[rows.start * m.cols * es..rows.end * m.cols * es].to_vec();
    }
    let n = rows.len();
    let mut f = vec![0f32; n * m.cols];
    super::parallel_rows(&mut f, m.cols, |i, row| m.row(rows.start + i, row));
    to_prec(&f, prec)
}

/// `f` as the bytes of `prec` values (rounded to nearest).
fn to_prec(f: &[f32], prec: Prec) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len() * prec.bytes());
    match prec {
        Prec::F32 => f.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Prec::F16 => f.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        Prec::Bf16 => f.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
    }
    out
}

impl Inner {
    fn alloc(&mut self, bytes: usize) -> Result<u64, DeviceError> {
        let p = self.gpu.alloc(bytes)?;
        self.allocs.push(p);
        Ok(p)
    }

    /// Uploads matrices one after another into one allocation.
    fn upload_stacked(&mut self, parts: &[&Matrix], prec: Prec) -> Result<u64, DeviceError> {
        let row_bytes = parts[0].cols * prec.bytes();
        let rows: usize = parts.iter().map(|m| m.rows).sum();
        let dst = self.alloc(rows * row_bytes)?;
        let mut off = 0;
        for m in parts {
            self.upload_into(dst + off as u64, m, prec)?;
            off += m.rows * row_bytes;
        }
        Ok(dst)
    }

    /// Uploads `m` to `dst`, converted 4096 rows at a time.
    fn upload_into(&mut self, dst: u64, m: &Matrix, prec: Prec) -> Result<(), DeviceError> {
        let mut off = 0;
        let mut r = 0;
        while r < m.rows {
            let end = (r + 4096).min(m.rows);
            let bytes = weight_bytes(m, prec, r..end);
            self.gpu.upload(dst + off as u64, &bytes)?;
            self.gpu.sync()?;
            off += bytes.len();
            r = end;
        }
        Ok(())
    }

    /// Uploads the rows of `a` and `b` alternately (a0 b0 a1 b1 …), 2048 pairs at a time: a
    /// SwiGLU's gate and up rows side by side, so one warp of the decode product has both.
    fn upload_interleaved(&mut self, a: &Matrix, b: &Matrix, prec: Prec) -> Result<u64, DeviceError> {
        let (rows, cols) = (a.rows, a.cols);
        let row_bytes = cols * prec.bytes();
        let dst = self.alloc(2 * rows * row_bytes)?;
        let mut r = 0;
        while r < rows {
            let end = (r + 2048).min(rows);
            let (ra, rb) = (weight_bytes(a, prec, r..end), weight_bytes(b, prec, r..end));
            let pairs: Vec<u8> = ra.chunks_exact(row_bytes).zip(rb.chunks_exact(row_bytes)).flat_map(|(x, y)| x.iter().chain(y).copied()).collect();
            self.gpu.upload(dst + (2 * r * row_bytes) as u64, &pairs)?;
            self.gpu.sync()?;
            r = end;
        }
        Ok(dst)
    }

    /// Uploads q, k and v one after another; with `head_dim` > 0 the rows of q and k are
    /// reordered head by head so that RoPE's pairs (i, i + hd/2) become (2i, 2i + 1).
    fn upload_qkv(&mut self, q: &Matrix, k: &Matrix, v: &Matrix, head_dim: usize, prec: Prec) -> Result<u64, DeviceError> {
        if head_dim == 0 {
            return self.upload_stacked(&[q, k, v], prec);
        }
        let row_bytes = q.cols * prec.bytes();
        let dst = self.alloc((q.rows + k.rows + v.rows) * row_bytes)?;
        let mut off = 0;
        for m in [q, k] {
            for h in 0..m.rows / head_dim {
                let rows = weight_bytes(m, prec, h * head_dim..(h + 1) * head_dim);
                let mut out = vec![0u8; rows.len()];
                for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
                    let to = interleaved_row(i, head_dim);
                    out[to * row_bytes..(to + 1) * row_bytes].copy_from_slice(row);
                }
                self.gpu.upload(dst + off as u64, &out)?;
                off += out.len();
            }
        }
        self.upload_into(dst + off as u64, v, prec)?;
        Ok(dst)
    }

    fn upload_f32(&mut self, v: &[f32]) -> Result<u64, DeviceError> {
        let p = self.alloc(v.len() * 4)?;
        self.gpu.upload(p, v)?;
        Ok(p)
    }
}

impl GpuModel {
    /// Uploads `model` to the GPU `info` describes (f32 throughout when `model.exact`).
    pub fn load(model: &Llama, info: &GpuInfo) -> Result<GpuModel, DeviceError> {
        let prec = precision_for(model);
        check_heads(&model.config, &info.label())?;
        let gpu = Cuda::open(info, prec, prec, model.config.head_dim, model.exact)?;
        Self::with_backend(model, Box::new(gpu), prec)
    }

    /// Uploads `model` through `gpu`, whose kernels were built for weights in `prec`.
    pub fn with_backend(model: &Llama, gpu: Box<dyn Backend>, prec: Prec) -> Result<GpuModel, DeviceError> {
        let c = model.config.clone();
        let label = gpu.label().to_string();
        check_heads(&c, &label)?;
        let group = c.n_heads / c.n_kv_heads;
        let (d, hd, nkv) = (c.dim, c.head_dim, c.n_kv_heads);
        let (q_dim, kv_dim) = (c.n_heads * hd, nkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let es = prec.bytes();
        let ctx = c.ctx_len.clamp(2, MAX_CONTEXT);
        let tile_tokens = (ATT_ROWS / group).max(1);
        let t = PASS_TOKENS;
        let s = PASS_SEQS;
        // GEMMs run in calls of `gr` rows (see `Backend::gemm_rows`): the buffers a GEMM reads or
        // writes have room for the padded last call (`t_gemm` rows), and the LM head's chunk of
        // rows is whole calls where it is at least one
        let gr = gpu.gemm_rows().max(1);
        let t_gemm = t.div_ceil(gr) * gr;
        let chunk = ((256usize << 20) / (c.vocab * 4)).clamp(GEN_SLOTS, t);
        let chunk = if chunk >= gr { chunk / gr * gr } else { chunk };
        let chunk_gemm = chunk.div_ceil(gr) * gr;
        let tile_cap = t / tile_tokens + s;
        let decode_split = rows_split(ctx);
        let dec_splits = ctx.div_ceil(decode_split).next_power_of_two();
        // a decode step's tiles are one token, `group` rows (see `Inner::run`)
        let part_rows = (tile_cap * nkv * ATT_ROWS).max(GEN_SLOTS * nkv * dec_splits * group);
        let table_cap = s * ctx.div_ceil(BLOCK);

        let mut inner = Inner {
            gpu,
            cfg: c.clone(),
            prec,
            emb: 0,
            lm_head: 0,
            out_norm: 0,
            inv_freq: 0,
            layers: Vec::new(),
            kc: 0,
            vc: 0,
            blocks: 0,
            buf: Buffers { x: 0, hn: 0, qkv: 0, att: 0, gu: 0, act: 0, sel: 0, logits: 0, out: 0, idx: 0, part_acc: 0, part_ml: 0, counters: 0 },
            chunk,
            table_cap,
            tile_cap,
            part_rows,
            kv_bytes: 0,
            graphs: HashMap::new(),
            matvec_ok: [d, q_dim, c.ffn_dim].iter().all(|k| k.is_multiple_of(16 / es)),
            mv: [MV_SHAPES[0]; 5],
            mv_timing: Vec::new(),
            ways: [0; 5],
            gemm_choices: Vec::new(),
            graphs_work: true,
            pass: Limits { tokens: t, seqs: s, tile_tokens },
            decode_attn: DecodeAttention { keys: None, split: decode_split },
            step: None,
            step_batch: 0,
            step_force: None,
            step_tables: HashMap::new(),
            last_chunk: (0, 0),
            allocs: Vec::new(),
        };
        // ── weights ──
        inner.emb = inner.upload_stacked(&[&model.tok_embd], prec)?;
        let tied = model.lm_head.data.as_slice().as_ptr() == model.tok_embd.data.as_slice().as_ptr();
        inner.lm_head = if tied { inner.emb } else { inner.upload_stacked(&[&model.lm_head], prec)? };
        inner.out_norm = inner.upload_f32(&model.out_norm)?;
        let inv_freq: Vec<f32> = (0..hd / 2).map(|i| c.rope_theta.powf(-(2.0 * i as f32) / hd as f32)).collect();
        inner.inv_freq = inner.upload_f32(&inv_freq)?;
        for l in &model.layers {
            // RoPE pairs (i, i + hd/2) become (2i, 2i + 1): q and k rows permuted head by head
            let pairs = c.rope_style == RopeStyle::Half;
            let bqkv = if l.bq.is_some() || l.bk.is_some() || l.bv.is_some() {
                let mut b = vec![0f32; qkv_dim];
                for (v, off, permute) in [(&l.bq, 0, pairs), (&l.bk, q_dim, pairs), (&l.bv, q_dim + kv_dim, false)] {
                    if let Some(v) = v {
                        for (i, x) in v.iter().enumerate() {
                            b[off + if permute { interleaved_row(i, hd) } else { i }] = *x;
                        }
                    }
                }
                inner.upload_f32(&b)?
            } else {
                0
            };
            let lw = LayerW {
                attn_norm: inner.upload_f32(&l.attn_norm)?,
                wqkv: inner.upload_qkv(&l.wq, &l.wk, &l.wv, if pairs { hd } else { 0 }, prec)?,
                bqkv,
                wo: inner.upload_stacked(&[&l.wo], prec)?,
                ffn_norm: inner.upload_f32(&l.ffn_norm)?,
                wgu: inner.upload_interleaved(&l.w_gate, &l.w_up, prec)?,
                wdown: inner.upload_stacked(&[&l.w_down], prec)?,
            };
            inner.layers.push(lw);
        }
        // ── pass buffers ──
        let f = 4;
        let b = Buffers {
            x: inner.alloc(t_gemm * d * f)?,
            hn: inner.alloc(t_gemm * d.max(q_dim) * es)?,
            qkv: inner.alloc(t_gemm * qkv_dim * f)?,
            att: inner.alloc(t_gemm * q_dim * es)?,
            gu: inner.alloc(t_gemm * 2 * c.ffn_dim * f)?,
            act: inner.alloc(t_gemm * c.ffn_dim * es)?,
            sel: inner.alloc(chunk_gemm * d * es)?,
            logits: inner.alloc(chunk_gemm * c.vocab * f)?,
            out: inner.alloc(t * 12)?,
            idx: inner.alloc((5 * t + s + 4 * tile_cap + table_cap) * 4)?,
            part_acc: inner.alloc(part_rows * hd * f)?,
            part_ml: inner.alloc(part_rows * 2 * f)?,
            counters: inner.alloc(tile_cap * nkv * 4)?,
        };
        inner.buf = b;
        let shared = attention_shared(hd) as usize;
        if shared > 48 * 1024 {
            inner.gpu.set_shared(Kernel::attention(hd), shared)?;
        }
        // decode steps on the decode attention kernel where it has a body for the head size and
        // its shared memory is granted: as many warps as fit, a split's keys in one round of them
        if let Some(k) = Kernel::attention_decode(hd) {
            let warps = ((SHARED_OPT_IN - dec_shared(hd, es, 0) as usize) / dec_warp_bytes(hd, es)).min(DEC_WARPS);
            let bytes = dec_shared(hd, es, warps as u32) as usize;
            if warps > 0 && (bytes <= 48 * 1024 || inner.gpu.set_shared(k, bytes).is_ok()) {
                inner.decode_attn = DecodeAttention { keys: Some((k, warps as u32)), split: (warps * DEC_TILE).max(inner.decode_attn.split) };
            }
        }
        // a staged product shape's block holds up to MV_M input rows of the widest product it runs
        for s in MV_SHAPES.iter().filter(|s| s.staged) {
            let most = Product::ALL.iter().map(|p| p.dims(&c)).filter(|&(_, k, _, out)| s.runs(out, k, es)).map(|(_, k, ..)| s.shared(MV_M, k, es) as usize).max().unwrap_or(0);
            if most > 48 * 1024 {
                inner.gpu.set_shared(s.kernel, most)?;
            }
        }
        // ── KV cache: what memory is left, less a margin for cuBLAS, up to what can be used ──
        inner.gpu.sync()?;
        let (free, _) = inner.gpu.memory()?;
        let block_bytes = 2 * c.n_layers * BLOCK * kv_dim * es;
        let budget = (free.saturating_sub(1 << 30) / 10 * 9).min(KV_MAX_BYTES);
        let blocks = (budget / block_bytes).min(s * ctx.div_ceil(BLOCK));
        if blocks < ctx.div_ceil(BLOCK).min(64) {
            return Err(cfg_err(&label, format!("not enough GPU memory for a KV cache ({} MiB free after the weights)", free >> 20)));
        }
        let half = blocks * BLOCK * kv_dim * es * c.n_layers;
        inner.kc = inner.alloc(half)?;
        inner.vc = inner.alloc(half)?;
        inner.blocks = blocks;
        inner.kv_bytes = 2 * half;
        inner.choose_gemm_ways()?;
        if inner.matvec_ok {
            inner.time_matvec()?;
            inner.step = inner.step_kernel()?;
            inner.choose_step()?;
        }
        Ok(GpuModel { inner: Mutex::new(inner), label, prec, max_context: ctx })
    }

    /// The model's state, its device made current on this thread.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, DeviceError> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.gpu.bind()?;
        Ok(g)
    }

    /// Scores requests in packed passes with shared prefixes (semantics of `Engine::score_batch`).
    pub fn score(&self, reqs: &[ScoreRequest], max_len: usize, sink: &mut dyn FnMut(usize, ScoreResult)) -> Result<(), DeviceError> {
        let mut g = self.lock()?;
        let lim = g.limits();
        let mut pool = BlockPool::new(g.blocks);
        batch::score(&mut *g, &mut pool, lim, reqs, max_len.min(self.max_context), sink)
    }

    /// Generates for every prompt with continuous batching over [`GEN_SLOTS`] sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(&self, prompts: &[Vec<u32>], opts: &[GenOptions], eos: &[u32], max_ctx: usize, slots: usize, decode: &dyn Fn(&[u32]) -> String, sink: &mut dyn FnMut(usize, Generated)) -> Result<(), DeviceError> {
        let mut g = self.lock()?;
        let lim = g.limits();
        let mut pool = BlockPool::new(g.blocks);
        batch::generate(&mut *g, &mut pool, lim, slots.min(GEN_SLOTS), prompts, opts, eos, max_ctx.min(self.max_context), decode, sink)
    }

    /// Smaller passes and decode splits than the buffers allow (tests: chunking, split merging).
    #[cfg(test)]
    fn tune(&self, tokens: usize, seqs: usize, decode_split: usize, lm_chunk: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.chunk = lm_chunk.clamp(1, g.chunk);
        g.pass.tokens = tokens.clamp(1, PASS_TOKENS);
        g.pass.seqs = seqs.clamp(1, PASS_SEQS);
        g.decode_attn.split = decode_split.max(1);
    }

    /// What timing the decode product kernel's shapes found when the model loaded (empty where
    /// nothing was timed: the decode steps then run the first shape).
    pub fn matvec_timing(&self) -> Vec<MvTiming> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).mv_timing.clone()
    }

    /// How each product's GEMM calls run (chosen when the model loaded).
    pub fn gemm_choices(&self) -> Vec<GemmChoice> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).gemm_choices.clone()
    }

    /// A line for the run's notes when some product has no way to run its GEMM calls that gives
    /// a row the same bits wherever it sits: scores may then change in their last bits with what
    /// else shares a pass.
    pub fn gemm_note(&self) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let odd: Vec<&str> = g.gemm_choices.iter().filter(|c| c.chosen.is_none()).map(|c| c.product.name()).collect();
        (!odd.is_empty()).then(|| {
            format!(
                "{}: no way the GPU's GEMM library offered for the {} product{} gave a token the same numbers wherever it sat in a call; \
                 scores may differ in their last digits with what else shares a pass",
                self.label,
                odd.join(", "),
                if odd.len() > 1 { "s" } else { "" }
            )
        })
    }

    /// Runs decode steps' attention on the scoring kernel (`warps` `None`) or the decode kernel
    /// with `warps` warps a block, in splits of `split` keys (tests: both score alike).
    #[cfg(test)]
    fn force_decode_attention(&self, warps: Option<u32>, split: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hd = g.cfg.head_dim;
        g.decode_attn = DecodeAttention { keys: warps.map(|w| (Kernel::attention_decode(hd).expect("a decode attention body"), w)), split };
        g.drop_graphs();
    }

    /// Up to how many sequences decoding together run their steps in one launch (the choice
    /// made at load: 0 none, `usize::MAX` all), or `None` where the one-launch step does not run
    /// this model here.
    pub fn one_launch(&self) -> Option<usize> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.step.map(|_| g.step_batch)
    }

    /// Runs every decode step in one launch (`Some(true)`) or launch by launch (`Some(false)`),
    /// or as chosen at load (`None`); both ways give the same bits (the GPU check compares
    /// them). Returns false where the one-launch step does not run this model here (decode steps
    /// then stay launch by launch).
    pub fn set_one_launch(&self, on: Option<bool>) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.step_force = on;
        g.drop_graphs();
        g.step.is_some()
    }

    /// Sets up the one-launch step as loading does, without timing it (tests on the emulated GPU,
    /// where timing it is slow: decode steps stay launch by launch unless forced); whether it runs.
    #[cfg(test)]
    fn add_step(&self) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.step = g.step_kernel().expect("the step kernel");
        g.step.is_some()
    }

    /// Runs every decode product on `shape` where it can make the output (tests: the shapes give
    /// the same bits).
    #[cfg(test)]
    fn force_matvec(&self, shape: MvShape) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let c = g.cfg.clone();
        for p in Product::ALL {
            let (_, k, _, out) = p.dims(&c);
            g.mv[p as usize] = if shape.runs(out, k, g.prec.bytes()) { shape } else { MV_SHAPES[0] };
        }
        // recorded steps hold the old kernels
        g.drop_graphs();
    }

    /// Bytes a decode step must read at the least: every layer's matrices and the LM head (not
    /// the embedding table, of which a step reads one row per sequence). Over the card's memory
    /// bandwidth this bounds decode at batch 1.
    pub fn bytes_per_token(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        matrix_bytes(&g.cfg, self.prec)
    }

    /// Bytes of the weights on the device, and of the KV cache.
    pub fn memory(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let embedding = if g.lm_head == g.emb { 0 } else { g.cfg.vocab * g.cfg.dim * self.prec.bytes() };
        (matrix_bytes(&g.cfg, self.prec) + embedding, g.kv_bytes)
    }
}

/// Bytes of every layer's matrices and of the LM head in `prec`.
fn matrix_bytes(c: &Config, prec: Prec) -> usize {
    let (d, q, kv) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let per_layer = (q + 2 * kv) * d + d * q + 3 * c.ffn_dim * d;
    (per_layer * c.n_layers + c.vocab * d) * prec.bytes()
}

impl Inner {
    fn limits(&self) -> Limits {
        self.pass
    }

    /// The ways a decode step's attention can run here, the one in use first: the scoring
    /// kernel in its splits, and the decode kernel (where it runs) in splits of one, two and
    /// four rounds of its warps.
    fn decode_attention_ways(&self) -> Vec<DecodeAttention> {
        let least = rows_split(self.cfg.ctx_len.clamp(2, MAX_CONTEXT));
        let mut ways = vec![self.decode_attn, DecodeAttention { keys: None, split: least }];
        if let Some((k, warps)) = self.decode_attn.keys {
            ways.extend([1, 2, 4].map(|r| DecodeAttention { keys: Some((k, warps)), split: (r * warps as usize * DEC_TILE).max(least) }));
        }
        let mut seen = Vec::new();
        ways.retain(|w| !seen.contains(w) && {
            seen.push(*w);
            true
        });
        ways
    }

    /// Forgets the recorded decode steps (they are recorded again as they next run).
    /// (and the one-launch step's phase tables, which hold the launches' arguments).
    fn drop_graphs(&mut self) {
        for (_, g) in self.graphs.drain() {
            self.gpu.drop_graph(g);
        }
        for (_, t) in self.step_tables.drain() {
            self.gpu.free(t);
        }
    }

    /// Enqueues one pass over the uploaded index arrays. Launch arguments depend only on the
    /// pass's shape (a decode step is recorded once as a graph and replayed with new index
    /// arrays). A decode step runs its products as the fused `matvec` kernel: RMSNorm and SwiGLU
    /// become the prologues of the products that read them; with `mode` its layers and LM head
    /// run as the phases of one launch (a decode step's LM head is one chunk: `chunk` is at least
    /// [`GEN_SLOTS`]). Returns the phases' table (empty launch by launch).
    fn enqueue(&self, ps: &PassShape, mode: StepMode) -> Result<Vec<u8>, DeviceError> {
        let c = &self.cfg;
        let b = &self.buf;
        let g = &self.gpu;
        let ix = IdxAt::new(b.idx, ps.n, ps.w, ps.spans, ps.tiles);
        let (n, w, n_tiles) = (ps.n, ps.w, ps.tiles);
        let mv = ps.decode && self.matvec_ok;
        let (d, hd, nh, nkv, ffn) = (c.dim, c.head_dim, c.n_heads, c.n_kv_heads, c.ffn_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let (ni, di) = (n as i32, d as i32);
        let kt = self.gpu_prec_bytes();
        let es = self.prec.bytes();
        let layer_kv = (self.blocks * BLOCK * kv_dim * kt) as u64;
        let grid = |x: usize| [x as u32, 1, 1];
        // y[m × n] (+)= input[m × k] · w[n × k]ᵀ on the matvec kernel (see MatvecArgs)
        let none = MatvecArgs { a: 0, x: 0, norm_w: 0, rows: 0, w: 0, y: 0, bias: 0, inv_freq: 0, pos: 0, seq_of: 0, blk_off: 0, tables: 0, kc: 0, vc: 0, nh: 0, nkv: 0, hd: 0, m: 0, n: 0, k: 0, mode: MV_PLAIN, out: MV_F32, accumulate: 0, eps: c.rms_eps };
        let phased = mode != StepMode::Launches;
        debug_assert!(!phased || (ps.decode && self.one_launch_now(ps.n)), "a one-launch step only where decode steps run in one launch");
        let launching = mode != StepMode::Table;
        let table = std::cell::RefCell::new(Vec::new());
        let matvec = |p: Product, a: MatvecArgs| {
            if phased {
                // (through a ring where that shape won the product's own launches)
                let kind = if self.mv[p as usize].queue > 0 && self.step.is_some_and(|s| s.ring) { PH_MATVEC_RING } else { PH_MATVEC };
                table.borrow_mut().extend(phase(kind, self.step_grid(a.m as usize, a.n as usize), &a));
                return Ok(());
            }
            g.launch_product(self.mv[p as usize], es, &a)
        };
        // out[m × n] (+)= input[m × k] · w[n × k]ᵀ as GEMM calls of one shape, on the product's way
        let gemm = |p: Product, m: usize, a: u64, w: u64, out: u64| {
            let (n, k, ..) = p.dims(c);
            g.product(&Gemm { m, n, k, a, w, c: out, accumulate: p.accumulates(), way: self.ways[p as usize] }, es)
        };
        let (nhi, nkvi, hdi) = (nh as i32, nkv as i32, hd as i32);
        if launching {
            g.launch(grid(n), 256, 0, &EmbedArgs { emb: self.emb, tok: ix.tok, x: b.x, d: di, n: ni })?;
        }
        for (li, l) in self.layers.iter().enumerate() {
            let (kc, vc) = (self.kc + li as u64 * layer_kv, self.vc + li as u64 * layer_kv);
            // x [n × d] → q [n × q_dim] rotated (in qkv), k and v rotated into the cache
            if mv {
                let (x, norm_w, w, y, bias, inv_freq) = (b.x, l.attn_norm, l.wqkv, b.qkv, l.bqkv, self.inv_freq);
                matvec(Product::Qkv, MatvecArgs { m: ni, n: qkv_dim as i32, k: di, mode: MV_NORM, x, norm_w, w, y, out: MV_QKV, bias, inv_freq, pos: ix.pos, seq_of: ix.seq_of, blk_off: ix.blk_off, tables: ix.tables, kc, vc, nh: nhi, nkv: nkvi, hd: hdi, ..none })?;
            } else {
                g.launch(grid(n), 256, 0, &NormArgs { x: b.x, w: l.attn_norm, rows: 0, out: b.hn, d: di, n: ni, eps: c.rms_eps })?;
                gemm(Product::Qkv, n, b.hn, l.wqkv, b.qkv)?;
                g.launch(grid(n), 256, 0, &RopeArgs { qkv: b.qkv, bias: l.bqkv, inv_freq: self.inv_freq, pos: ix.pos, seq_of: ix.seq_of, blk_off: ix.blk_off, tables: ix.tables, kc, vc, n: ni, nh: nhi, nkv: nkvi, hd: hdi })?;
            }
            let scale = 1.0 / (hd as f32).sqrt();
            let (split, max_splits) = (ps.split as i32, ps.max_splits as i32);
            // att [n × q_dim]: the key splits and their merge in one launch
            let (tiles, pos, blk_off, tables, part_acc, part_ml, counters, att) = (ix.tiles, ix.pos, ix.blk_off, ix.tables, b.part_acc, b.part_ml, b.counters, b.att);
            // (a decode step on the decode kernel where it runs, else on the scoring pass's)
            let (kernel, threads, shared) = match self.decode_attn.keys {
                Some((k, warps)) if ps.decode => (k, 32 * warps, dec_shared(hd, kt, warps)),
                _ => (Kernel::attention(hd), 128, attention_shared(hd)),
            };
            let (att_grid, args) = ([n_tiles as u32, nkv as u32, ps.max_splits as u32], AttnArgs { qkv: b.qkv, kc, vc, tiles, pos, blk_off, tables, part_acc, part_ml, counters, att, n_tiles: n_tiles as i32, nh: nhi, nkv: nkvi, hd: hdi, split_len: split, max_splits, row_stride: ps.row_stride as i32, scale });
            if phased {
                table.borrow_mut().extend(phase(PH_ATTENTION, att_grid, &args));
            } else {
                g.launch_as(kernel, att_grid, threads, shared, &args)?;
            }
            // x += att · woᵀ, then x += swiglu(norm(x) · wguᵀ) · wdownᵀ
            if mv {
                matvec(Product::Out, MatvecArgs { m: ni, n: di, k: q_dim as i32, a: b.att, w: l.wo, y: b.x, accumulate: 1, ..none })?;
                matvec(Product::GateUp, MatvecArgs { m: ni, n: 2 * ffn as i32, k: di, mode: MV_NORM, x: b.x, norm_w: l.ffn_norm, w: l.wgu, y: b.act, out: MV_GLU, ..none })?;
                matvec(Product::Down, MatvecArgs { m: ni, n: di, k: ffn as i32, a: b.act, w: l.wdown, y: b.x, accumulate: 1, ..none })?;
            } else {
                gemm(Product::Out, n, b.att, l.wo, b.x)?;
                g.launch(grid(n), 256, 0, &NormArgs { x: b.x, w: l.ffn_norm, rows: 0, out: b.hn, d: di, n: ni, eps: c.rms_eps })?;
                gemm(Product::GateUp, n, b.hn, l.wgu, b.gu)?;
                g.launch(grid(n), 256, 0, &SwigluArgs { gu: b.gu, act: b.act, n: ni, ffn: ffn as i32 })?;
                gemm(Product::Down, n, b.act, l.wdown, b.x)?;
            }
        }
        // the wanted rows, final-normed, through the LM head in chunks: logits [rows × vocab]
        let mut r0 = 0;
        while r0 < w {
            let rows = self.chunk.min(w - r0);
            let want = ix.want + (r0 * 4) as u64;
            if mv {
                matvec(Product::LmHead, MatvecArgs { m: rows as i32, n: c.vocab as i32, k: di, mode: MV_NORM, x: b.x, norm_w: self.out_norm, rows: want, w: self.lm_head, y: b.logits, ..none })?;
            } else {
                g.launch(grid(rows), 256, 0, &NormArgs { x: b.x, w: self.out_norm, rows: want, out: b.sel, d: di, n: rows as i32, eps: c.rms_eps })?;
                gemm(Product::LmHead, rows, b.sel, self.lm_head, b.logits)?;
            }
            if let (StepMode::OneLaunch(phases), Some(step)) = (mode, self.step) {
                let count = (table.borrow().len() / PHASE_BYTES) as i32;
                g.launch_cooperative(step.kernel, step.blocks, STEP_THREADS, step.shared, StepArgs { phases, bar: step.bar, count }.bytes())?;
                g.mark(&|| (format!("decode step, one launch ({count} phases, {} blocks)", step.blocks), matrix_bytes(c, self.prec) / es))?;
            }
            let (lp, am) = (b.out + (r0 * 8) as u64, b.out + (w * 8 + r0 * 4) as u64);
            if launching {
                g.launch(grid(rows), REDUCE_THREADS, 0, &ReduceArgs { logits: b.logits, target: ix.target + (r0 * 4) as u64, lp, am, vocab: c.vocab as i32, n: rows as i32 })?;
            }
            r0 += rows;
        }
        Ok(table.into_inner())
    }

    /// Whether a decode step of `n` sequences runs in one launch now: chosen at load for its
    /// batch (or forced), with the products on the matvec kernel and the attention on the decode
    /// kernel's blocks of eight warps (the step's blocks; the bench and the tests may run it
    /// another way for a while).
    fn one_launch_now(&self, n: usize) -> bool {
        let on = self.step_force.unwrap_or(n <= self.step_batch);
        on && self.step.is_some() && self.matvec_ok && matches!(self.decode_attn.keys, Some((_, w)) if 32 * w == STEP_THREADS)
    }

    /// A product's virtual grid as a phase of the one-launch step: its input row groups, and
    /// weight row groups up to the step's blocks (each block then takes one, its warps streaming
    /// every row group of theirs in turn).
    fn step_grid(&self, m: usize, n: usize) -> [u32; 3] {
        let [x, groups, _] = STEP_SHAPE.grid(m, n);
        let blocks = self.step.map_or(1, |s| s.blocks);
        [x, groups.min((blocks / x).max(1)), 1]
    }

    /// Picks, for each product, the first of the backend's ways to run its GEMM calls that gives
    /// a row the same bits wherever the row sits in a call. Passes call each product in one shape
    /// (see [`Backend::gemm_rows`]), so with such a way a token's numbers do not depend on what
    /// else is in its pass; a way that splits the inner dimension by an output tile's place
    /// (stream-K) fails. The check: one call on random inputs, then the same rows rotated by one
    /// place (every row moves, and rows at tile edges change tiles), compared bit for bit.
    fn choose_gemm_ways(&mut self) -> Result<(), DeviceError> {
        let c = self.cfg.clone();
        let r = self.gpu.gemm_rows().max(1);
        let b = &self.buf;
        let mut rng = crate::stats::SplitMix64::new(0x6e6d);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect() };
        let mut choices = Vec::new();
        for p in Product::ALL {
            // the buffers the passes use for the product: input, weights, output
            let (a, w, out) = match (p, self.layers.first()) {
                (Product::Qkv, Some(l)) => (b.hn, l.wqkv, b.qkv),
                (Product::Out, Some(l)) => (b.att, l.wo, b.x),
                (Product::GateUp, Some(l)) => (b.hn, l.wgu, b.gu),
                (Product::Down, Some(l)) => (b.act, l.wdown, b.x),
                (Product::LmHead, _) => (b.sel, self.lm_head, b.logits),
                _ => continue,
            };
            let (n, k, ..) = p.dims(&c);
            // rows rotated down by one place
            let rotate = |v: &[f32], len: usize| -> Vec<f32> { (0..r).flat_map(|i| v[(i + r - 1) % r * len..][..len].iter().copied()).collect() };
            // the input, and the output it adds to (the residual stream) where it does
            let one = (random(r * k), if p.accumulates() { random(r * n) } else { Vec::new() });
            let two = (rotate(&one.0, k), if p.accumulates() { rotate(&one.1, n) } else { Vec::new() });
            let call = Gemm { m: r, n, k, a, w, c: out, accumulate: p.accumulates(), way: 0 };
            let gpu = &self.gpu;
            let run = |g: &Gemm, (x, start): &(Vec<f32>, Vec<f32>)| -> Result<Vec<f32>, DeviceError> {
                gpu.upload_bytes(a, &to_prec(x, self.prec))?;
                gpu.upload(out, start)?;
                gpu.gemm(g)?;
                let mut y = vec![0f32; r * n];
                gpu.download(out, &mut y)?;
                Ok(y)
            };
            let mut tried = Vec::new();
            let mut chosen = None;
            // the other ways are only listed (a library loaded, heuristics asked) when way 0 fails
            let (mut way, mut ways) = (0, 1);
            while way < ways {
                let g = Gemm { way, ..call };
                let same = run(&g, &one).and_then(|y1| {
                    let y2 = run(&g, &two)?;
                    Ok((0..r).all(|i| y1[i * n..][..n].iter().zip(&y2[(i + 1) % r * n..][..n]).all(|(x, y)| x.to_bits() == y.to_bits())))
                });
                match same {
                    // the library's own choice must run: the passes fall back to it
                    Err(e) if way == 0 => return Err(e),
                    Err(e) => tried.push((gpu.gemm_way_name(&g, way), Err(e.to_string()))),
                    Ok(same) => {
                        tried.push((gpu.gemm_way_name(&g, way), Ok(same)));
                        if same {
                            chosen = Some(way);
                            break;
                        }
                    }
                }
                if way == 0 {
                    ways = gpu.gemm_ways(&call);
                    // its name now says why there are no others, where there are none
                    tried[0].0 = gpu.gemm_way_name(&call, 0);
                }
                way += 1;
            }
            self.ways[p as usize] = chosen.unwrap_or(0);
            choices.push(GemmChoice { product: p, shape: (r, n, k), tried, chosen });
        }
        self.gemm_choices = choices;
        Ok(())
    }

    /// Times every shape of the decode product kernel on each of the model's products (one input
    /// row, each layer's matrix in turn, so the weights come from memory as in a decode step) and
    /// keeps the fastest for each. The shapes give the same bits, so this changes speed only. A
    /// backend without timing keeps the first shape everywhere.
    fn time_matvec(&mut self) -> Result<(), DeviceError> {
        let c = self.cfg.clone();
        let b = &self.buf;
        // one output row: the widest product's, as f32 (the epilogues are not timed: q/k/v and
        // gate/up write f32 rows here, not the KV cache and SwiGLU)
        let widest = Product::ALL.iter().map(|p| p.dims(&c).0).max().unwrap_or(0);
        let y = if self.chunk * c.vocab >= widest {
            b.logits
        } else if PASS_TOKENS * 2 * c.ffn_dim >= widest {
            b.gu
        } else {
            return Ok(());
        };
        // inputs that are not zeros: the residual row and the attention and SwiGLU outputs
        let (q_dim, ffn) = (c.n_heads * c.head_dim, c.ffn_dim);
        let x: Vec<f32> = (0..c.dim).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        self.gpu.upload(b.x, &x)?;
        for (dst, len) in [(b.att, q_dim), (b.act, ffn)] {
            let v: Vec<f32> = (0..len).map(|i| ((i * 53 % 97) as f32 - 48.0) / 96.0).collect();
            self.gpu.upload_bytes(dst, &to_prec(&v, self.prec))?;
        }
        let mut timing = Vec::new();
        for p in Product::ALL {
            let (n, k, mode, out) = p.dims(&c);
            let shapes: Vec<MvShape> = MV_SHAPES.iter().copied().filter(|s| s.runs(out, k, self.prec.bytes())).collect();
            // (weights, norm weights) of each launch: every layer's, or the LM head's
            let mats: Vec<(u64, u64)> = match p {
                Product::Qkv => self.layers.iter().map(|l| (l.wqkv, l.attn_norm)).collect(),
                Product::Out => self.layers.iter().map(|l| (l.wo, 0)).collect(),
                Product::GateUp => self.layers.iter().map(|l| (l.wgu, l.ffn_norm)).collect(),
                Product::Down => self.layers.iter().map(|l| (l.wdown, 0)).collect(),
                Product::LmHead => vec![(self.lm_head, self.out_norm)],
            };
            let a = match p {
                Product::Out => b.att,
                Product::Down => b.act,
                _ => 0,
            };
            let g = &self.gpu;
            let run = |s: MvShape| -> Result<(), DeviceError> {
                for &(w, norm_w) in &mats {
                    let args = MatvecArgs { a, x: b.x, norm_w, rows: 0, w, y, bias: 0, inv_freq: 0, pos: 0, seq_of: 0, blk_off: 0, tables: 0, kc: 0, vc: 0, nh: 0, nkv: 0, hd: 0, m: 1, n: n as i32, k: k as i32, mode, out: MV_F32, accumulate: 0, eps: c.rms_eps };
                    g.launch_raw(s.kernel, s.grid(1, n), s.threads(), s.shared(1, k, self.prec.bytes()), args.bytes())?;
                }
                Ok(())
            };
            for &s in &shapes {
                run(s)?; // warm-up
            }
            if g.profile(true).is_err() {
                return Ok(()); // no events: the first shape everywhere
            }
            let timed = || -> Result<(), DeviceError> {
                for _ in 0..MV_REPEATS {
                    for &s in &shapes {
                        run(s)?;
                        g.mark(&|| (s.name(), 0))?;
                    }
                }
                Ok(())
            };
            let ran = timed();
            let ops = g.profile(false);
            ran?;
            let Ok(ops) = ops else { return Ok(()) };
            // each shape's best repeat, per matrix
            let best = |i: usize| ops.iter().skip(i).step_by(shapes.len()).map(|o| o.ms).fold(f64::INFINITY, f64::min) * 1e3 / mats.len() as f64;
            let micros: Vec<(MvShape, f64)> = shapes.iter().enumerate().map(|(i, &s)| (s, best(i))).collect();
            // the fastest; the first of equals
            let chosen = micros.iter().fold(micros[0], |best, &t| if t.1 < best.1 { t } else { best }).0;
            self.mv[p as usize] = chosen;
            timing.push(MvTiming { product: p, n, k, micros, chosen });
        }
        self.mv_timing = timing;
        Ok(())
    }

    /// The phase table of decode steps of `shape` on the device, written the first time.
    fn step_table(&mut self, shape: &PassShape) -> Result<u64, DeviceError> {
        if let Some(&t) = self.step_tables.get(shape) {
            return Ok(t);
        }
        let table = self.enqueue(shape, StepMode::Table)?;
        let t = self.gpu.alloc(table.len())?;
        self.step_tables.insert(*shape, t);
        self.gpu.upload_bytes(t, &table)?;
        Ok(t)
    }

    /// The one-launch decode step, where it can run this model: the decode attention with eight
    /// warps (its blocks' size), the products' inputs within the staged shape's shared memory,
    /// and room for at least one block.
    fn step_kernel(&mut self) -> Result<Option<StepKernel>, DeviceError> {
        let (c, es) = (self.cfg.clone(), self.prec.bytes());
        let (Some(kernel), Some((_, warps))) = (Kernel::decode_step(c.head_dim), self.decode_attn.keys) else { return Ok(None) };
        if 32 * warps != STEP_THREADS {
            return Ok(None);
        }
        let dims: Vec<_> = Product::ALL.iter().map(|p| p.dims(&c)).collect();
        if !dims.iter().all(|&(_, k, _, out)| STEP_SHAPE.runs(out, k, es)) {
            return Ok(None);
        }
        // products through a ring where every product's input and ring fit
        let ring = dims.iter().all(|&(_, k, _, out)| STEP_RING_SHAPE.runs(out, k, es));
        let widest = dims.iter().map(|&(_, k, ..)| if ring { STEP_RING_SHAPE } else { STEP_SHAPE }.shared(MV_M, k, es)).max().unwrap_or(0);
        let shared = widest.max(dec_shared(c.head_dim, es, warps));
        if shared as usize > 48 * 1024 && self.gpu.set_shared(kernel, shared as usize).is_err() {
            return Ok(None);
        }
        // (a device that cannot say runs decode steps launch by launch)
        let blocks = self.gpu.resident_blocks(kernel, STEP_THREADS, shared).unwrap_or(0);
        if blocks == 0 {
            return Ok(None);
        }
        let bar = self.alloc(8)?;
        Ok(Some(StepKernel { kernel, blocks, shared, bar, ring, recorded: true }))
    }

    /// Times decode steps in one launch against launch by launch at each of [`STEP_BATCHES`]
    /// (the sequences' first tokens, each in a block of its own: nothing is cached yet), recorded
    /// once, then [`STEP_REPEATS`] steps each way, and runs steps in one launch up to the largest
    /// batch from which on it kept winning (every batch if it won at the largest). Both ways give
    /// the same bits. A one-launch step that fails to run or to record is not used.
    fn choose_step(&mut self) -> Result<(), DeviceError> {
        use self::batch::{pack, Span};
        self.step_batch = 0;
        for (i, &b) in STEP_BATCHES.iter().enumerate() {
            if self.step.is_none() || b > self.blocks.min(self.pass.seqs) {
                break;
            }
            let spans: Vec<Span> = (0..b).map(|s| Span { table: vec![s as u32], start: 0, tokens: vec![0], want: vec![(0, None)] }).collect();
            let p = pack(&spans, 1);
            let mut best = [f64::INFINITY; 2];
            for on in [false, true] {
                self.step_force = Some(on);
                self.drop_graphs();
                let ran = self.run(&p, true);
                if on && (ran.is_err() || self.step.is_none()) {
                    self.step = None;
                    break;
                }
                ran?;
                for _ in 0..STEP_REPEATS {
                    let t0 = std::time::Instant::now();
                    self.run(&p, true)?;
                    best[on as usize] = best[on as usize].min(t0.elapsed().as_secs_f64());
                }
            }
            if self.step.is_none() || best[1] >= best[0] {
                break;
            }
            self.step_batch = if i + 1 == STEP_BATCHES.len() { usize::MAX } else { b };
        }
        self.step_force = None;
        self.drop_graphs();
        Ok(())
    }

    fn gpu_prec_bytes(&self) -> usize {
        // the KV cache uses the weights' storage type
        self.prec.bytes()
    }
}

impl Forward for Inner {
    type Error = DeviceError;

    fn run(&mut self, p: &Packed, decode: bool) -> Result<Vec<RowOut>, DeviceError> {
        let (n, w, nt, spans) = (p.tokens(), p.want.len(), p.tiles(), p.blk_off.len());
        let nkv = self.cfg.n_kv_heads;
        let (split, max_splits) = if decode { (self.decode_attn.split, (p.max_pos() / self.decode_attn.split + 1).next_power_of_two()) } else { (MAX_CONTEXT, 1) };
        let group = self.cfg.n_heads / nkv;
        let row_stride = if decode { p.tiles.chunks_exact(4).map(|t| t[2] as usize).max().unwrap_or(1) * group } else { ATT_ROWS };
        let label = self.gpu.label().to_string();
        if n == 0 || n > PASS_TOKENS || w > PASS_TOKENS || spans > PASS_SEQS || nt > self.tile_cap || p.tables.len() > self.table_cap || p.max_pos() >= MAX_CONTEXT || nt * nkv * max_splits * row_stride > self.part_rows {
            return Err(DeviceError::Cuda { device: label, what: "packing a pass".into(), detail: format!("{n} tokens, {w} rows, {spans} sequences, {nt} tiles, {} table entries, last position {} exceed the engine's buffers", p.tables.len(), p.max_pos()) });
        }
        let shape = PassShape { n, w, spans, tiles: nt, split, max_splits, row_stride, decode };
        self.gpu.upload(self.buf.idx, &IdxAt::fill(p))?;
        let mode = if decode && self.one_launch_now(n) { StepMode::OneLaunch(self.step_table(&shape)?) } else { StepMode::Launches };
        let unrecorded = mode != StepMode::Launches && self.step.is_some_and(|s| !s.recorded);
        if decode && self.graphs_work && !unrecorded && !self.graphs.contains_key(&shape) {
            let this = &*self;
            let capture = || this.gpu.capture(&mut || this.enqueue(&shape, mode).map(drop));
            let mut graph = capture()?;
            // a driver that cannot record overlapping launches: plain launches from then on,
            // unless it would not record them either (overlap was not the cause: kept as it was)
            if graph.is_none() && self.gpu.set_overlap(false) {
                graph = capture()?;
                if graph.is_none() {
                    self.gpu.set_overlap(true);
                }
            }
            match graph {
                Some(g) => {
                    self.graphs.insert(shape, g);
                }
                // a one-launch step the driver will not record: launched as it is (three kernels
                // a step) from now on
                None if mode != StepMode::Launches => {
                    if let Some(s) = self.step.as_mut() {
                        s.recorded = false;
                    }
                }
                None => self.graphs_work = false,
            }
        }
        let replayed = self.graphs.get(&shape).filter(|_| decode && self.graphs_work).map(|g| self.gpu.replay(g));
        let ran = match replayed {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if mode != StepMode::Launches => Err(e),
            // a recording of overlapping launches that the driver will not run: the pass, and
            // the ones after it, with plain launches
            Some(Err(e)) => {
                if !self.gpu.set_overlap(false) {
                    return Err(e);
                }
                self.drop_graphs();
                self.enqueue(&shape, mode).map(drop)
            }
            None => self.enqueue(&shape, mode).map(drop),
        };
        match ran {
            Ok(()) => {}
            // a one-launch step the driver refused (its blocks no longer fit at once, or its
            // recording will not replay): this step, and the ones after it, launch by launch
            Err(_) if mode != StepMode::Launches => {
                self.step = None;
                self.drop_graphs();
                self.enqueue(&shape, StepMode::Launches)?;
            }
            Err(e) => return Err(e),
        }
        let last = if w == 0 { 0 } else { (w - 1) % self.chunk + 1 };
        self.last_chunk = (w - last, last);
        // one download: [w] f64 log-probs, then [w] i32 argmaxes
        let mut out = vec![0u8; w * 12];
        self.gpu.download(self.buf.out, &mut out)?;
        let (lp, am) = out.split_at(w * 8);
        let rows = lp.chunks_exact(8).zip(am.chunks_exact(4)).map(|(l, a)| {
            let logprob = f64::from_le_bytes(l.try_into().expect("8 bytes"));
            // `logits_reduce` marks a row holding NaN as -1 - (the first NaN's index)
            let am = i32::from_le_bytes(a.try_into().expect("4 bytes"));
            RowOut { logprob, argmax: am.max(0) as u32, nan: (am < 0).then(|| (-1 - am) as u32) }
        });
        Ok(rows.collect())
    }

    fn logits(&mut self, row: usize) -> Result<Vec<f32>, DeviceError> {
        let (first, count) = self.last_chunk;
        if row < first || row >= first + count {
            return Err(DeviceError::Cuda { device: self.gpu.label().to_string(), what: "reading logits".into(), detail: format!("row {row} is not in the last LM-head chunk ({first}..{})", first + count) });
        }
        let v = self.cfg.vocab;
        let mut out = vec![0f32; v];
        self.gpu.download(self.buf.logits + ((row - first) * v * 4) as u64, &mut out)?;
        Ok(out)
    }

    fn too_long(&self, tokens: usize, blocks: usize) -> DeviceError {
        DeviceError::Cuda { device: self.gpu.label().to_string(), what: "KV cache".into(), detail: format!("a sequence of {tokens} tokens needs more than the {blocks} blocks of {BLOCK} tokens that fit in GPU memory") }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.drop_graphs();
        for p in self.allocs.drain(..) {
            self.gpu.free(p);
        }
    }
}

/// [`Bench`]'s figures with kernels launched the other way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtherMode {
    /// whether kernels overlapped (programmatic dependent launch) in this mode
    pub overlap: bool,
    pub prefill: f64,
    pub decode: f64,
}

/// What [`GpuModel::bench`] measured.
#[derive(Debug, Clone)]
pub struct Bench {
    /// tokens/s of one prompt's prefill
    pub prefill: f64,
    /// generated tokens/s over the batch
    pub decode: f64,
    /// both figures in the other launch mode, where the device has both
    pub other_mode: Option<OtherMode>,
    /// decode tokens/s with each way a decode step's attention can run here (see
    /// [`DecodeAttention::name`]), the engine's own first: `decode` again
    pub attention: Vec<(String, f64)>,
    /// where the one-launch decode step runs here: whether `decode` ran it (the engine's
    /// choice at load), and decode tokens/s the other way
    pub one_launch: Option<(bool, f64)>,
    /// with a profile: each operation of a prefill pass and of a decode step
    pub prefill_ops: Vec<Timed>,
    pub decode_ops: Vec<Timed>,
    /// why the profile could not be taken
    pub profile_error: Option<String>,
}

impl GpuModel {
    /// Prefill speed (one `prompt`, tokens/s) and decode speed (`batch` copies of it advancing
    /// `steps` greedy tokens together, generated tokens/s over all of them). With `profile`, one
    /// more prefill pass and decode step run launch by launch (no graph), each operation timed.
    pub fn bench(&self, prompt: &[u32], batch: usize, steps: usize, profile: bool) -> Result<Bench, DeviceError> {
        use self::batch::{pack, Span};
        let mut g = self.lock()?;
        let lim = g.limits();
        let batch = batch.clamp(1, GEN_SLOTS);
        let steps = steps.clamp(2, self.max_context / 2);
        let prompt = &prompt[..prompt.len().min(lim.tokens).min(self.max_context - steps - 1)];
        if prompt.is_empty() {
            return Err(DeviceError::Cuda { device: self.label.clone(), what: "bench".into(), detail: "an empty prompt".into() });
        }
        let mut pool = BlockPool::new(g.blocks);
        let per_seq = (prompt.len() + steps + 1).div_ceil(BLOCK);
        let tables: Vec<Vec<u32>> = (0..batch).map(|_| pool.alloc(per_seq).ok_or_else(|| g.too_long(prompt.len() + steps, g.blocks))).collect::<Result<_, _>>()?;
        // prefill alone (timed), then the other copies' prefills
        let one = |t: &Vec<u32>| Span { table: t.clone(), start: 0, tokens: prompt.to_vec(), want: vec![(prompt.len() - 1, None)] };
        let prefill_run = |g: &mut Inner| -> Result<(f64, Vec<RowOut>), DeviceError> {
            g.run(&pack(&[one(&tables[0])], lim.tile_tokens), false)?; // warm-up: clocks up, caches filled
            let reps = 3;
            let t0 = std::time::Instant::now();
            let mut first = Vec::new();
            for _ in 0..reps {
                first = g.run(&pack(&[one(&tables[0])], lim.tile_tokens), false)?;
            }
            Ok(((reps * prompt.len()) as f64 / t0.elapsed().as_secs_f64(), first))
        };
        let (prefill, first) = prefill_run(&mut g)?;
        let mut next: Vec<u32> = vec![first[0].argmax; batch];
        for t in &tables[1..] {
            g.run(&pack(&[one(t)], lim.tile_tokens), false)?;
        }
        let step = |g: &mut Inner, next: &[u32], pos: usize| -> Result<Vec<RowOut>, DeviceError> {
            let spans: Vec<Span> = tables.iter().zip(next).map(|(t, &tok)| Span { table: t.clone(), start: pos, tokens: vec![tok], want: vec![(0, None)] }).collect();
            g.run(&pack(&spans, 1), true)
        };
        // `steps` greedy steps after the prompt (again from the prompt's end on a second call:
        // each step rewrites its position's keys and values); one untimed step records the graph
        let first_next = next.clone();
        let decode_run = |g: &mut Inner, next: &mut Vec<u32>| -> Result<f64, DeviceError> {
            *next = first_next.clone();
            let warm = step(g, next, prompt.len())?;
            *next = warm.iter().map(|r| r.argmax).collect();
            let t0 = std::time::Instant::now();
            for s in 1..steps {
                let rows = step(g, next, prompt.len() + s)?;
                *next = rows.iter().map(|r| r.argmax).collect();
            }
            Ok(((steps - 1) * batch) as f64 / t0.elapsed().as_secs_f64())
        };
        let decode = decode_run(&mut g, &mut next)?;
        // the same in the other launch mode (overlapping, or each kernel after the last), where
        // the device has both: turning overlap on answers whether it took
        let mut other_mode = None;
        let was = g.gpu.set_overlap(true);
        if g.gpu.set_overlap(!was) {
            g.drop_graphs();
            let other = prefill_run(&mut g).and_then(|(prefill, _)| Ok(OtherMode { overlap: !was, prefill, decode: decode_run(&mut g, &mut next)? }));
            g.gpu.set_overlap(was);
            g.drop_graphs();
            other_mode = Some(other?);
        } else {
            g.gpu.set_overlap(was);
        }
        // decode again with each other way to run its attention
        let own = g.decode_attn;
        let mut attention = vec![(own.name(), decode)];
        for way in g.decode_attention_ways().into_iter().skip(1) {
            g.decode_attn = way;
            g.drop_graphs();
            let run = decode_run(&mut g, &mut next);
            g.decode_attn = own;
            g.drop_graphs();
            attention.push((way.name(), run?));
        }
        // and with the one-launch step the other way, where it runs here
        let mut one_launch = None;
        if g.step.is_some() {
            let (own, force) = (g.one_launch_now(batch), g.step_force);
            g.step_force = Some(!own);
            g.drop_graphs();
            let run = decode_run(&mut g, &mut next);
            g.step_force = force;
            g.drop_graphs();
            one_launch = Some((own, run?));
        }
        let mut out = Bench { prefill, decode, other_mode, attention, one_launch, prefill_ops: Vec::new(), decode_ops: Vec::new(), profile_error: None };
        if profile {
            // launch by launch: no graph, an event after each operation, and the decode step's
            // products and attention each its own launch unless a way was forced (`set_one_launch`)
            let graphs = std::mem::replace(&mut g.graphs_work, false);
            let force = g.step_force;
            g.step_force = force.or(Some(false));
            let timed = |g: &mut Inner, pass: &dyn Fn(&mut Inner) -> Result<Vec<RowOut>, DeviceError>| -> Result<Vec<Timed>, DeviceError> {
                g.gpu.profile(true)?;
                let ran = pass(g);
                let ops = g.gpu.profile(false);
                ran?;
                ops
            };
            let prefill_pass = |g: &mut Inner| g.run(&pack(&[one(&tables[0])], lim.tile_tokens), false);
            // the decode step is also the range an external profiler collects (see `gpu-check.sh --ncu`)
            let decode_step = |g: &mut Inner| {
                g.gpu.profiler_range(true)?;
                let rows = step(g, &next, prompt.len() + steps);
                g.gpu.profiler_range(false)?;
                rows
            };
            match timed(&mut g, &prefill_pass).and_then(|p| Ok((p, timed(&mut g, &decode_step)?))) {
                Ok((p, d)) => (out.prefill_ops, out.decode_ops) = (p, d),
                // the figures above stand; the profile is a diagnostic
                Err(e) => out.profile_error = Some(e.to_string()),
            }
            g.graphs_work = graphs;
            g.step_force = force;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
