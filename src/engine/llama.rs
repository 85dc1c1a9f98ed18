//! The LLaMA-family forward pass (llama, mistral, qwen2, SmolLM2), top to bottom.
//!
//! One function, [`Llama::forward`], runs a batch of new tokens of one sequence through every
//! layer, appending to that sequence's KV cache, and computes logits only at the positions the
//! caller asks for (the LM head is the most expensive matmul of a small model). Rotary embeddings
//! come in two layouts: GGUF llama/mistral weights are permuted for interleaved pairs, HF and
//! qwen2 weights rotate the two halves of each head.

use super::numerics::{self, AttnOrder};
use super::Matrix;
use half::f16;

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's "normal" mode, for GGUF llama/mistral (permuted Q/K rows).
    Interleaved,
    /// Pairs (i, i + d/2): the HF `rotate_half` layout, and GGUF qwen2 ("neox" mode).
    Half,
}

/// Model hyper-parameters.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub ctx_len: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub rope_style: RopeStyle,
}

/// The metadata keys a format stores [`Config`]'s values under, for error messages.
pub struct ConfigKeys {
    pub n_layers: String,
    pub head_dim: String,
    pub ffn_dim: String,
    pub vocab: String,
    pub ctx_len: String,
    pub rope_theta: String,
    pub rms_eps: String,
}

impl Config {
    /// Values the forward pass cannot run with (a layerless model, an odd head size for RoPE, a
    /// NaN or non-positive RoPE base or norm epsilon), named by the file's `keys`.
    pub fn check(&self, keys: &ConfigKeys) -> Result<(), String> {
        let bad = |key: &str, value: String, why: &str| Err(format!("{key} is {value}: {why}; the file's metadata is damaged or not a LLaMA-family model's"));
        if self.n_layers == 0 {
            return bad(&keys.n_layers, "0".into(), "a model needs at least one layer");
        }
        if self.head_dim < 2 || !self.head_dim.is_multiple_of(2) {
            return bad(&keys.head_dim, self.head_dim.to_string(), "rotary embeddings need an even head size of at least 2");
        }
        if self.ffn_dim == 0 {
            return bad(&keys.ffn_dim, "0".into(), "the feed-forward size must be at least 1");
        }
        if self.vocab == 0 {
            return bad(&keys.vocab, "0".into(), "the vocabulary is empty");
        }
        if self.ctx_len < 2 {
            return bad(&keys.ctx_len, self.ctx_len.to_string(), "the context must hold at least 2 tokens");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(&keys.rope_theta, self.rope_theta.to_string(), "the RoPE base must be a positive number");
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad(&keys.rms_eps, self.rms_eps.to_string(), "the RMSNorm epsilon must be a number of at least 0");
        }
        Ok(())
    }
}

/// A norm weight or bias that holds NaN or infinity would turn every score into NaN.
pub fn check_finite(name: &str, v: &[f32]) -> Result<(), String> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("tensor {name} holds {} at index {i}: the weights are damaged", v[i])),
        None => Ok(()),
    }
}

/// One transformer block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    /// qwen2 has biases on q, k and v.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

/// The tensor names of one block's weights, in a file format's naming; `{l}` is the layer.
pub struct LayerNames {
    pub attn_norm: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub q_bias: &'static str,
    pub k_bias: &'static str,
    pub v_bias: &'static str,
    pub ffn_norm: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// Builds every block from a format's tensor lookups: `matrix(name, rows, cols)`, `vector(name,
/// n)` and `opt_vector` (biases, which only some architectures have).
pub fn build_layers<E>(
    c: &Config,
    names: &LayerNames,
    matrix: impl Fn(&str, usize, usize) -> Result<Matrix, E>,
    vector: impl Fn(&str, usize) -> Result<Vec<f32>, E>,
    opt_vector: impl Fn(&str, usize) -> Result<Option<Vec<f32>>, E>,
) -> Result<Vec<Layer>, E> {
    let (d, q_dim, kv_dim) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    (0..c.n_layers)
        .map(|l| {
            let n = |pattern: &str| pattern.replace("{l}", &l.to_string());
            Ok(Layer {
                attn_norm: vector(&n(names.attn_norm), d)?,
                wq: matrix(&n(names.q), q_dim, d)?,
                wk: matrix(&n(names.k), kv_dim, d)?,
                wv: matrix(&n(names.v), kv_dim, d)?,
                wo: matrix(&n(names.o), d, q_dim)?,
                bq: opt_vector(&n(names.q_bias), q_dim)?,
                bk: opt_vector(&n(names.k_bias), kv_dim)?,
                bv: opt_vector(&n(names.v_bias), kv_dim)?,
                ffn_norm: vector(&n(names.ffn_norm), d)?,
                w_gate: matrix(&n(names.gate), c.ffn_dim, d)?,
                w_up: matrix(&n(names.up), c.ffn_dim, d)?,
                w_down: matrix(&n(names.down), d, c.ffn_dim)?,
            })
        })
        .collect()
}

/// A loaded model.
pub struct Llama {
    pub config: Config,
    pub tok_embd: Matrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// The LM head; the embedding matrix itself when embeddings are tied.
    pub lm_head: Matrix,
    /// `inv_freq[i] = theta^(-2i/head_dim)` (exact path).
    inv_freq: Vec<f32>,
    /// `theta^(-2/head_dim)`: llama.cpp's per-pair angle factor.
    theta_scale: f32,
    /// Multiply in f32 throughout, with an f32 KV cache and libm functions, instead of
    /// reproducing llama.cpp's arithmetic (8-bit activations, f16 cache, ggml's polynomial exp;
    /// see [`numerics`]). Slower; the mathematically exact forward pass, used to check the model
    /// against an independent reference.
    pub exact: bool,
}

/// The KV cache of one sequence: per layer, keys and values of every processed position. With
/// llama.cpp's arithmetic they are kept in f16, as llama.cpp keeps them: they are f16-rounded
/// before they are stored, so nothing is lost, and attention reads half the bytes. The exact mode
/// keeps f32.
pub struct Cache {
    /// [n_layers][len × kv_dim], llama.cpp's arithmetic
    k16: Vec<Vec<f16>>,
    v16: Vec<Vec<f16>>,
    /// [n_layers][len × kv_dim], the exact mode
    k32: Vec<Vec<f32>>,
    v32: Vec<Vec<f32>>,
    /// Tokens processed so far (the cache holds their keys and values).
    pub tokens: Vec<u32>,
}

impl Cache {
    pub fn new(n_layers: usize) -> Cache {
        Cache { k16: vec![Vec::new(); n_layers], v16: vec![Vec::new(); n_layers], k32: vec![Vec::new(); n_layers], v32: vec![Vec::new(); n_layers], tokens: Vec::new() }
    }

    /// Forgets every position from `len` on (to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        for rows in self.k16.iter_mut().chain(&mut self.v16) {
            rows.truncate(len * kv_dim);
        }
        for rows in self.k32.iter_mut().chain(&mut self.v32) {
            rows.truncate(len * kv_dim);
        }
        self.tokens.truncate(len);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// x ← x / rms(x) · w, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Llama {
    pub fn new(config: Config, tok_embd: Matrix, layers: Vec<Layer>, out_norm: Vec<f32>, lm_head: Matrix) -> Llama {
        let hd = config.head_dim;
        let inv_freq = (0..hd / 2).map(|i| config.rope_theta.powf(-(2.0 * i as f32) / hd as f32)).collect();
        let theta_scale = config.rope_theta.powf(-2.0 / hd as f32);
        Llama { config, tok_embd, layers, out_norm, lm_head, inv_freq, theta_scale, exact: false }
    }

    pub fn kv_dim(&self) -> usize {
        self.config.n_kv_heads * self.config.head_dim
    }

    /// Rotates one head vector in place for position `pos` (exact path).
    fn rope(&self, head: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        for (i, f) in self.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (a, b) = match self.config.rope_style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Half => (i, i + hd / 2),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }

    /// Runs `tokens` (appended after the cache's positions) through the model and returns the
    /// logits at each index of `want` (indices into `tokens`), as `want.len() × vocab`. Attention
    /// follows llama.cpp's arithmetic for a batch of this many tokens.
    pub fn forward(&self, cache: &mut Cache, tokens: &[u32], want: &[usize]) -> Vec<f32> {
        let order = if tokens.len() >= 2 { AttnOrder::Batch } else { AttnOrder::Single };
        self.forward_ordered(cache, tokens, want, order)
    }

    /// [`Llama::forward`] with llama.cpp's attention arithmetic chosen by the caller: scoring
    /// reproduces one batch over context and continuation even when only the continuation is fed.
    pub fn forward_ordered(&self, cache: &mut Cache, tokens: &[u32], want: &[usize], order: AttnOrder) -> Vec<f32> {
        let c = &self.config;
        let (t, d, hd) = (tokens.len(), c.dim, c.head_dim);
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let kv_dim = nkv * hd;
        let start = cache.len();

        // x: [t × d] token embeddings
        let mut x = vec![0f32; t * d];
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.tok_embd.row(tok as usize, row);
        }
        let mut h = vec![0f32; t * d]; // [t × d] normalised input of a sub-block
        let mut q = vec![0f32; t * nh * hd]; // [t × nh·hd]
        let mut k = vec![0f32; t * kv_dim]; // [t × kv_dim]
        let mut v = vec![0f32; t * kv_dim]; // [t × kv_dim]
        let mut att = vec![0f32; t * nh * hd]; // [t × nh·hd] attention output
        let mut proj = vec![0f32; t * d]; // [t × d] output projection
        let mut gate = vec![0f32; t * c.ffn_dim]; // [t × ffn]
        let mut up = vec![0f32; t * c.ffn_dim]; // [t × ffn]

        let norm = |x: &[f32], w: &[f32], out: &mut [f32]| {
            if self.exact {
                rms_norm(x, w, c.rms_eps, out)
            } else {
                numerics::rms_norm(x, w, c.rms_eps, out)
            }
        };
        // llama.cpp's rotary angles, one row of (cos, sin) per new position: [t][hd/2]
        let angles: Vec<Vec<(f32, f32)>> = if self.exact {
            Vec::new()
        } else {
            (0..t)
                .map(|i| {
                    let mut a = Vec::with_capacity(hd / 2);
                    numerics::rope_angles(start + i, hd / 2, self.theta_scale, &mut a);
                    a
                })
                .collect()
        };

        for (li, layer) in self.layers.iter().enumerate() {
            // ── attention ──
            norm(&x, &layer.attn_norm, &mut h); // h: [t × d]
            layer.wq.matmul(&h, t, &mut q, self.exact); // q: [t × nh·hd]
            layer.wk.matmul(&h, t, &mut k, self.exact); // k: [t × kv_dim]
            layer.wv.matmul(&h, t, &mut v, self.exact); // v: [t × kv_dim]
            for (b, buf) in [(&layer.bq, &mut q), (&layer.bk, &mut k), (&layer.bv, &mut v)] {
                if let Some(b) = b {
                    for row in buf.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    }
                }
            }
            if self.exact {
                for i in 0..t {
                    for head in q[i * nh * hd..(i + 1) * nh * hd].chunks_exact_mut(hd) {
                        self.rope(head, start + i);
                    }
                    for head in k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                        self.rope(head, start + i);
                    }
                }
            } else {
                let (step, off) = match c.rope_style {
                    RopeStyle::Interleaved => (2, 1),
                    RopeStyle::Half => (1, hd / 2),
                };
                for (i, a) in angles.iter().enumerate() {
                    numerics::rope_heads(&mut q[i * nh * hd..(i + 1) * nh * hd], hd, a, step, off);
                    numerics::rope_heads(&mut k[i * kv_dim..(i + 1) * kv_dim], hd, a, step, off);
                }
                // llama.cpp keeps an f16 cache and multiplies f16 queries with it
                for buf in [&mut q, &mut k, &mut v] {
                    buf.iter_mut().for_each(|x| *x = numerics::round_f16(*x));
                }
            }
            // att: [t × nh·hd] over the cache's [(start+t) × kv_dim] keys and values
            if self.exact {
                cache.k32[li].extend_from_slice(&k);
                cache.v32[li].extend_from_slice(&v);
                let (ck, cv) = (&cache.k32[li], &cache.v32[li]);
                let scale = 1.0 / (hd as f32).sqrt();
                self.attention_blocks(&q, start, &mut att, |kvh, qs, ns, out| {
                    for ((qh, &n), o) in qs.chunks_exact(hd).zip(ns).zip(out.chunks_exact_mut(hd)) {
                        simd::attend(qh, ck, cv, kv_dim, kvh * hd, n, scale, o);
                    }
                });
            } else {
                cache.k16[li].extend(k.iter().map(|&x| f16::from_f32(x)));
                cache.v16[li].extend(v.iter().map(|&x| f16::from_f32(x)));
                self.attention(order, &q, &cache.k16[li], &cache.v16[li], start, &mut att);
            }
            layer.wo.matmul(&att, t, &mut proj, self.exact); // proj: [t × d]
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);

            // ── feed-forward (SwiGLU) ──
            norm(&x, &layer.ffn_norm, &mut h); // h: [t × d]
            layer.w_gate.matmul(&h, t, &mut gate, self.exact); // gate: [t × ffn]
            layer.w_up.matmul(&h, t, &mut up, self.exact); // up: [t × ffn]
            if self.exact {
                gate.iter_mut().zip(&up).for_each(|(g, u)| *g = silu(*g) * u); // gate: [t × ffn]
            } else {
                for (g, u) in gate.chunks_exact_mut(c.ffn_dim).zip(up.chunks_exact(c.ffn_dim)) {
                    numerics::swiglu(g, u); // g: [ffn]
                }
            }
            layer.w_down.matmul(&gate, t, &mut proj, self.exact); // proj: [t × d]
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        cache.tokens.extend_from_slice(tokens);

        // Final norm and LM head, only at the wanted positions.
        let mut sel = vec![0f32; want.len() * d]; // [w × d]
        for (row, &i) in sel.chunks_exact_mut(d).zip(want) {
            norm(&x[i * d..(i + 1) * d], &self.out_norm, row);
        }
        let mut logits = vec![0f32; want.len() * c.vocab]; // [w × vocab]
        if !want.is_empty() {
            self.lm_head.matmul(&sel, want.len(), &mut logits, self.exact);
        }
        logits
    }

    /// Attention of the new tokens (queries `q`: [t × nh·hd]) with llama.cpp's arithmetic over
    /// the cache's keys `ck` and values `cv` ([(start+t) × kv_dim]) into `att`: [t × nh·hd].
    /// Token i sees positions 0..=start+i (causal).
    fn attention(&self, order: AttnOrder, q: &[f32], ck: &[f16], cv: &[f16], start: usize, att: &mut [f32]) {
        let c = &self.config;
        let (hd, nh, kv_dim) = (c.head_dim, c.n_heads, c.n_kv_heads * c.head_dim);
        if q.len() == nh * hd && start + 1 >= SPLIT_FROM {
            return self.attention_one(order, q, ck, cv, start + 1, att);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        self.attention_blocks(q, start, att, |kvh, qs, ns, out| {
            numerics::attend_rows(order, qs, ns, ck, cv, kv_dim, kvh * hd, scale, out);
        });
    }

    /// Runs `rows(kvh, qs, ns, out)` once per (block of up to ROWS_TOKENS tokens, KV head): the
    /// group's query heads for those tokens (`qs`: [m × hd], m = tokens·group, row r seeing the
    /// first `ns[r]` positions) attend together, reading each key and value once between them,
    /// into `out`: [m × hd]; the rows land in `att`: [t × nh·hd].
    fn attention_blocks(&self, q: &[f32], start: usize, att: &mut [f32], rows: impl Fn(usize, &[f32], &[usize], &mut [f32]) + Sync) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let (group, t) = (nh / nkv, q.len() / (nh * hd));
        let blocks = t.div_ceil(ROWS_TOKENS);
        let item = ROWS_TOKENS * group * hd; // [ROWS_TOKENS·group × hd] outputs per item
        let mut outs = vec![0f32; blocks * nkv * item]; // [blocks × nkv × item]
        super::parallel_rows(&mut outs, item, |it, out| {
            let (b, kvh) = (it / nkv, it % nkv);
            let tokens = b * ROWS_TOKENS..t.min((b + 1) * ROWS_TOKENS);
            let mut qs = Vec::with_capacity(tokens.len() * group * hd); // [m × hd]
            let mut ns = Vec::with_capacity(tokens.len() * group); // [m] positions seen
            for i in tokens {
                qs.extend_from_slice(&q[(i * nh + kvh * group) * hd..(i * nh + (kvh + 1) * group) * hd]);
                ns.extend(std::iter::repeat_n(start + i + 1, group));
            }
            rows(kvh, &qs, &ns, &mut out[..qs.len()]);
        });
        // att: [t × nh·hd], head kvh·group + g of token i from row (i % ROWS_TOKENS)·group + g
        for (i, row) in att.chunks_exact_mut(nh * hd).enumerate() {
            for (kvh, heads) in row.chunks_exact_mut(group * hd).enumerate() {
                let from = ((i / ROWS_TOKENS) * nkv + kvh) * item + (i % ROWS_TOKENS) * group * hd;
                heads.copy_from_slice(&outs[from..from + group * hd]);
            }
        }
    }

    /// One token's attention over `n` positions, split three ways so that every thread has work
    /// (one token gives [`Llama::attention`] only one item per KV head): scores by chunks of
    /// positions, softmax by head, weighted values by (KV head, 16-column slice). The steps are
    /// those of `numerics::attend_rows`, so each head gets the same bits.
    fn attention_one(&self, order: AttnOrder, q: &[f32], ck: &[f16], cv: &[f16], n: usize, att: &mut [f32]) {
        const CHUNK: usize = 256; // positions per scoring item
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let (group, kv_dim) = (nh / nkv, nkv * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        let ns = vec![n; group]; // every head of a group sees all n positions
        // scores: [chunks × nh × CHUNK], head h's scores for chunk ci in row h of item ci
        let mut parts = vec![f32::NEG_INFINITY; n.div_ceil(CHUNK) * nh * CHUNK];
        super::parallel_rows(&mut parts, nh * CHUNK, |ci, out| {
            let ps = ci * CHUNK..n.min((ci + 1) * CHUNK);
            for (kvh, rows) in out.chunks_exact_mut(group * CHUNK).enumerate() {
                let qg = &q[kvh * group * hd..(kvh + 1) * group * hd]; // [group × hd]
                numerics::attend_scores(order, qg, &ns, ck, kv_dim, kvh * hd, scale, ps.clone(), rows, CHUNK);
            }
        });
        // weights: [nh × n8], each head's scores gathered, padded with -inf, then its softmax
        let n8 = n.div_ceil(8) * 8;
        let mut w = vec![f32::NEG_INFINITY; nh * n8];
        for (h, row) in w.chunks_exact_mut(n8).enumerate() {
            for (ci, part) in parts.chunks_exact(nh * CHUNK).enumerate() {
                let len = CHUNK.min(n - ci * CHUNK);
                row[ci * CHUNK..ci * CHUNK + len].copy_from_slice(&part[h * CHUNK..h * CHUNK + len]);
            }
        }
        super::parallel_rows(&mut w, n8, |_, row| numerics::attend_softmax(row, n));
        // values: [nkv × slices × group·slice], one item per (KV head, column slice)
        let slice = if hd.is_multiple_of(16) { 16 } else if hd.is_multiple_of(8) { 8 } else { hd };
        let slices = hd / slice;
        let mut vals = vec![0f32; nkv * slices * group * slice];
        super::parallel_rows(&mut vals, group * slice, |it, out| {
            let (kvh, s) = (it / slices, it % slices);
            let wg = &w[kvh * group * n8..(kvh + 1) * group * n8]; // [group × n8]
            numerics::attend_values(order, hd, wg, n8, &ns, cv, kv_dim, kvh * hd + s * slice, slice, out);
        });
        // att: [nh × hd], columns s·slice.. of head kvh·group + g from row g of item (kvh, s)
        for (it, item) in vals.chunks_exact(group * slice).enumerate() {
            let (kvh, s) = (it / slices, it % slices);
            for (g, row) in item.chunks_exact(slice).enumerate() {
                let at = (kvh * group + g) * hd + s * slice;
                att[at..at + slice].copy_from_slice(row);
            }
        }
    }
}

/// Positions from which a single token's attention is split across threads by positions and
/// columns ([`Llama::attention_one`]); below, the extra hand-offs cost more than the balance gains.
const SPLIT_FROM: usize = 1024;

/// Tokens whose query rows attend together (with every query head of one KV head): enough rows to
/// reuse each key and value read from memory many times, few enough that the rows' scores stay
/// in cache and a 512-token chunk still gives every thread work.
const ROWS_TOKENS: usize = 8;

/// Attention's inner loops, with an AVX2+FMA version chosen at run time.
mod simd {
    /// One query row against the first `n` cached positions: `out = softmax(q·Kᵀ·scale)·V`, where
    /// position p's key is `k[p·stride + off ..][..q.len()]` (and likewise for values).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, off: usize, n: usize, scale: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { attend_avx2(q, k, v, stride, off, n, scale, out) };
        }
        attend_generic(q, k, v, stride, off, n, scale, out)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn attend_generic(q: &[f32], k: &[f32], v: &[f32], stride: usize, off: usize, n: usize, scale: f32, out: &mut [f32]) {
        // Plain loops, no closures: a closure would not inherit the caller's target features.
        let hd = q.len();
        let mut scores = vec![0f32; n]; // [n]
        let mut max = f32::NEG_INFINITY;
        for p in 0..n {
            let s = dot_generic(q, &k[p * stride + off..p * stride + off + hd]) * scale;
            scores[p] = s;
            max = max.max(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (p, s) in scores.iter().enumerate() {
            axpy_generic(out, s / sum, &v[p * stride + off..p * stride + off + hd]);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_avx2(q: &[f32], k: &[f32], v: &[f32], stride: usize, off: usize, n: usize, scale: f32, out: &mut [f32]) {
        // SAFETY: the assert above bounds every pointer offset by the slices' lengths; the CPU has
        // AVX2 and FMA (checked by the caller).
        use std::arch::x86_64::*;
        let hd = q.len();
        if !hd.is_multiple_of(8) {
            return attend_generic(q, k, v, stride, off, n, scale, out);
        }
        assert!(n == 0 || (n - 1) * stride + off + hd <= k.len().min(v.len()), "cache too short");
        assert!(out.len() >= hd, "output row too short");
        unsafe {
            let mut scores = vec![0f32; n]; // [n]
            let mut max = f32::NEG_INFINITY;
            for (p, score) in scores.iter_mut().enumerate() {
                let kp = k.as_ptr().add(p * stride + off);
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i < hd {
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), _mm256_loadu_ps(kp.add(i)), acc);
                    i += 8;
                }
                // Horizontal sum of the 8 lanes.
                let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
                *score = _mm_cvtss_f32(s1) * scale;
                max = max.max(*score);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            out.fill(0.0);
            let o = out.as_mut_ptr();
            for (p, s) in scores.iter().enumerate() {
                let w = _mm256_set1_ps(s / sum);
                let vp = v.as_ptr().add(p * stride + off);
                let mut i = 0;
                while i < hd {
                    _mm256_storeu_ps(o.add(i), _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(i)), _mm256_loadu_ps(o.add(i))));
                    i += 8;
                }
            }
        }
    }

    #[inline(always)]
    fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let n16 = a.len() / 16 * 16;
        let mut i = 0;
        while i < n16 {
            for j in 0..16 {
                acc[j] = a[i + j].mul_add(b[i + j], acc[j]);
            }
            i += 16;
        }
        let mut total = 0f32;
        for x in acc {
            total += x;
        }
        while i < a.len() {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }

    #[inline(always)]
    fn axpy_generic(out: &mut [f32], w: f32, x: &[f32]) {
        for i in 0..out.len().min(x.len()) {
            out[i] = x[i].mul_add(w, out[i]);
        }
    }
}

/// `log_softmax(logits)[target]` in f64, and whether `target` is the argmax (first on ties).
pub fn logprob_and_greedy(logits: &[f32], target: u32) -> (f64, bool) {
    // in f64 from the f32 logits, as the reference's log-softmax: a difference taken in f32 would
    // round each logit's distance from the maximum (errors of ~1e-5 nats in the result)
    let max = f64::from(logits.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let lp = f64::from(logits[target as usize]) - max - sum.ln();
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    (lp, best == target as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::WType;
    use crate::engine::{Bytes, Matrix};
    use std::sync::Arc;

    /// A single token's attention split across threads by positions and columns gives every head
    /// the bits of the block path, in both of llama.cpp's orders, for several head layouts.
    #[test]
    fn split_single_token_attention_equals_the_block_path() {
        let mut rng = crate::stats::SplitMix64::new(5);
        let mut r = move || numerics::round_f16(((rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0);
        let zeros = |rows: usize, cols: usize| Matrix { ty: WType::F32, rows, cols, data: Bytes::Owned(Arc::new(vec![0u8; rows * cols * 4])) };
        for (heads, kv_heads, hd, n) in [(9, 3, 64, SPLIT_FROM), (4, 4, 32, 1300), (6, 2, 8, 1100), (4, 2, 12, 1030)] {
            let dim = heads * hd;
            let config = Config { arch: "llama".into(), n_layers: 0, dim, n_heads: heads, n_kv_heads: kv_heads, head_dim: hd, ffn_dim: 8, vocab: 4, ctx_len: 4096, rope_theta: 10_000.0, rms_eps: 1e-5, rope_style: RopeStyle::Half };
            let model = Llama::new(config, zeros(4, dim), Vec::new(), vec![1.0; dim], zeros(4, dim));
            let kv_dim = kv_heads * hd;
            let q: Vec<f32> = (0..dim).map(|_| r()).collect();
            let (k, v): (Vec<f16>, Vec<f16>) = (0..n * kv_dim).map(|_| (f16::from_f32(r()), f16::from_f32(r()))).unzip();
            for order in [AttnOrder::Batch, AttnOrder::Single] {
                let (mut split, mut blocks) = (vec![0f32; dim], vec![0f32; dim]);
                model.attention_one(order, &q, &k, &v, n, &mut split);
                let scale = 1.0 / (hd as f32).sqrt();
                model.attention_blocks(&q, n - 1, &mut blocks, |kvh, qs, ns, out| {
                    numerics::attend_rows(order, qs, ns, &k, &v, kv_dim, kvh * hd, scale, out);
                });
                for (i, (a, b)) in split.iter().zip(&blocks).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{order:?} heads {heads}/{kv_heads} hd {hd} n {n}: head {} column {}: {a} vs {b}", i / hd, i % hd);
                }
            }
        }
    }
}

