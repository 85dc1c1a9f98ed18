//! llama.cpp's float arithmetic outside the matmuls, reproduced bit for bit.
//!
//! A 135M model with 8-bit activations is chaotic: one activation that lands on the other side of a
//! rounding boundary moves a log-probability by tenths of a nat, so "the same maths" is not enough
//! to give llama.cpp's numbers. Every operation here follows the order, precision and rounding of
//! ggml's CPU backend as built for AVX2+FMA (the reference build): RMS norm summed in f64, RoPE from
//! an incrementally multiplied angle, an f16 KV cache with f16 queries and f16 attention weights,
//! ggml's own polynomial `expf` for softmax and SiLU, and the lane layouts of its dot products
//! (tinyBLAS for batches of two or more tokens, `ggml_vec_dot_f16` for a single token). Each
//! function has a scalar form that the AVX2 forms must equal exactly (tested below).

use half::f16;
use std::ops::Range;

/// Rounds to the nearest f16 (ties to even) and back, as ggml's f32→f16 copies do.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Sum of 8 lanes in the order of ggml's `hsum_float_8` and tinyBLAS's `hsum`:
/// `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
#[inline]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// ggml's AVX2 `ggml_v_expf`, one lane (a polynomial, not libm's `expf`).
#[inline]
pub fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), (-n).mul_add(f32::from_bits(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(u, f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)))
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 || n.is_nan() {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `silu(x) · g` over a row as ggml's `ggml_vec_swiglu_f32`: polynomial exp on groups of 8, libm
/// `expf` on the tail.
pub fn swiglu(x: &mut [f32], g: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { x86::swiglu(x, g) };
    }
    let n8 = x.len() / 8 * 8;
    for (v, g) in x[..n8].iter_mut().zip(g) {
        *v = *v / (1.0 + v_expf(0.0 - *v)) * g;
    }
    for (v, g) in x[n8..].iter_mut().zip(&g[n8..]) {
        *v = *v / (1.0 + (-*v).exp()) * g;
    }
}

/// In-place softmax of one row of scores as ggml's `soft_max` op: polynomial exp on groups of 8
/// (each group summed as [`hsum8`], the groups in f64), libm `expf` on the tail, then a multiply
/// by the f32 reciprocal of the f64 sum. Returns nothing; `x` holds the weights.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n8 = x.len() / 8 * 8;
    let mut sum = 0f64;
    #[cfg(target_arch = "x86_64")]
    let simd = avx2();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    for c in x[..n8].chunks_exact_mut(8) {
        let mut v = [0f32; 8];
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA; `c` holds 8 values.
            unsafe {
                x86::exp8_sub(c, max, &mut v)
            };
        } else {
            for (o, s) in v.iter_mut().zip(c.iter()) {
                *o = v_expf(s - max);
            }
        }
        c.copy_from_slice(&v);
        sum += f64::from(hsum8(&v));
    }
    for s in &mut x[n8..] {
        *s = (*s - max).exp();
        sum += f64::from(*s);
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|s| *s *= inv);
}

/// Dot product in tinyBLAS's order (llama.cpp's attention for two or more tokens): lane `l` chains
/// fused multiply-adds over elements `l, l+8, …`; lanes summed as [`hsum8`].
#[inline(always)]
pub fn dot_tiled(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks(8).zip(b.chunks(8)) {
        for l in 0..ca.len().min(cb.len()) {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    hsum8(&acc)
}

/// Dot product in `ggml_vec_dot_f16`'s order (llama.cpp's attention for a single token): four
/// 8-lane accumulators over chunks of 32, reduced pairwise then with two horizontal adds; a tail
/// past the last full chunk is added in f64.
#[inline(always)]
pub fn dot_vec(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n / 32 * 32;
    let mut acc = [[0f32; 8]; 4];
    for (ca, cb) in a[..np].chunks_exact(32).zip(b[..np].chunks_exact(32)) {
        for (j, accj) in acc.iter_mut().enumerate() {
            for (l, al) in accj.iter_mut().enumerate() {
                *al = ca[8 * j + l].mul_add(cb[8 * j + l], *al);
            }
        }
    }
    let mut x0 = [0f32; 8];
    for (l, x) in x0.iter_mut().enumerate() {
        *x = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let t0 = [x0[0] + x0[4], x0[1] + x0[5], x0[2] + x0[6], x0[3] + x0[7]];
    let mut sum = f64::from((t0[0] + t0[1]) + (t0[2] + t0[3]));
    for e in np..n {
        sum += f64::from(a[e] * b[e]);
    }
    sum as f32
}

/// Which of llama.cpp's two attention arithmetics a forward pass reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnOrder {
    /// A batch of two or more tokens (tinyBLAS).
    Batch,
    /// A single token (`ggml_vec_dot_f16`).
    Single,
}

/// Query rows of one KV head, row `j` (`q[j·hd..][..hd]`) against the first `ns[j]` cached
/// positions, with llama.cpp's arithmetic: `q`, keys and values are already f16-rounded; scores
/// `q·k · scale`, softmax, weights rounded to f16, then the weighted sum of values into row `j` of
/// `out`. Keys/values of position `p` are `k[p·stride + off ..][..hd]`. Each row's numbers are
/// those of that row alone; rows are taken together only to share memory reads.
/// The three steps are also public ([`attend_scores`], [`attend_softmax`], [`attend_values`]) so
/// that a single token's attention can be split across threads by positions, then dimensions.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(order: AttnOrder, q: &[f32], ns: &[usize], k: &[f16], v: &[f16], stride: usize, off: usize, scale: f32, out: &mut [f32]) {
    let m = ns.len();
    assert!(m > 0 && q.len().is_multiple_of(m), "one query row per position count");
    let hd = q.len() / m;
    let n = ns.iter().copied().max().unwrap_or(0);
    let n8 = n.div_ceil(8) * 8;
    // each step checks its own bounds
    ROW_SCORES.with(|buf| {
        let w = &mut *buf.borrow_mut();
        w.clear();
        w.resize(m * n8, f32::NEG_INFINITY); // [m × n8] scores, then weights; masked padding
        attend_scores(order, q, ns, k, stride, off, scale, 0..n, w, n8);
        for (row, &n) in w.chunks_exact_mut(n8.max(1)).zip(ns) {
            attend_softmax(row, n);
        }
        attend_values(order, hd, w, n8, ns, v, stride, off, hd, out);
    })
}

thread_local! {
    /// Per thread: [`attend_rows`]'s scores, then weights.
    static ROW_SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Step 1 of [`attend_rows`] for the positions `ps` only: `w[j·ws + p - ps.start] = q_j·k_p · scale`
/// for each `p` in `ps` below `ns[j]`; other entries are left as they are (the caller fills the
/// rows with -∞ first).
#[allow(clippy::too_many_arguments)]
pub fn attend_scores(order: AttnOrder, q: &[f32], ns: &[usize], k: &[f16], stride: usize, off: usize, scale: f32, ps: Range<usize>, w: &mut [f32], ws: usize) {
    let m = ns.len();
    assert!(m > 0 && q.len().is_multiple_of(m), "one query row per position count");
    let hd = q.len() / m;
    let end = ns.iter().map(|&n| n.min(ps.end)).max().unwrap_or(0);
    assert!(end <= ps.start || (end - 1) * stride + off + hd <= k.len(), "cache too short");
    assert!(ps.len() <= ws && w.len() >= (m - 1) * ws + ps.len(), "score rows too short");
    #[cfg(target_arch = "x86_64")]
    if avx2() && hd.is_multiple_of(8) {
        // SAFETY: the CPU has AVX2, FMA and F16C; the asserts above bound every slice.
        return unsafe { x86::scores(order, q, ns, k, stride, off, scale, ps, w, ws) };
    }
    for (j, (qr, &n)) in q.chunks_exact(hd).zip(ns).enumerate() {
        scores_impl(order, qr, k, stride, off, scale, ps.start..ps.end.min(n), &mut w[j * ws..]);
    }
}

/// Step 2 of [`attend_rows`]: one row's `n` scores (padded with -∞ to a multiple of 8, which
/// `w` must hold) become weights, rounded to f16; the padding becomes 0.
pub fn attend_softmax(w: &mut [f32], n: usize) {
    let n8 = n.div_ceil(8) * 8;
    assert!(w.len() >= n8, "score row too short");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; w holds n8 entries.
        return unsafe { x86::softmax_f16(&mut w[..n8]) };
    }
    softmax(&mut w[..n8]);
    w[..n8].iter_mut().for_each(|x| *x = round_f16(*x));
}

/// Step 3 of [`attend_rows`] for the value columns `off..off + width` of a head `hd` wide:
/// `out[j·width..][..width] = Σ_p w[j·ws + p]·v_p`, over `p < ns[j]`.
#[allow(clippy::too_many_arguments)]
pub fn attend_values(order: AttnOrder, hd: usize, w: &[f32], ws: usize, ns: &[usize], v: &[half::f16], stride: usize, off: usize, width: usize, out: &mut [f32]) {
    let m = ns.len();
    let n = ns.iter().copied().max().unwrap_or(0);
    assert!(m > 0 && width <= hd, "rows and columns");
    assert!(n == 0 || (n - 1) * stride + off + width <= v.len(), "cache too short");
    assert!(ns.iter().enumerate().all(|(j, &n)| j * ws + n <= w.len()), "weight rows too short");
    assert!(out.len() >= m * width, "output too short");
    #[cfg(target_arch = "x86_64")]
    if avx2() && hd.is_multiple_of(8) && width.is_multiple_of(8) {
        // SAFETY: the CPU has AVX2, FMA and F16C; the asserts above bound every slice.
        return unsafe { x86::values(order, w, ws, ns, v, stride, off, width, out) };
    }
    for (j, (&n, o)) in ns.iter().zip(out.chunks_exact_mut(width)).enumerate() {
        values_impl(order, hd, &w[j * ws..j * ws + n], v, stride, off, width, o);
    }
}

/// One row of [`attend_rows`] in plain Rust, one step after the other: the specification the
/// tests hold the AVX2 forms and the split steps to.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attend_impl(order: AttnOrder, q: &[f32], k: &[f16], v: &[f16], stride: usize, off: usize, n: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    let mut w = vec![f32::NEG_INFINITY; n.div_ceil(8) * 8]; // [n8] scores, then weights; masked padding
    scores_impl(order, q, k, stride, off, scale, 0..n, &mut w);
    softmax(&mut w);
    w.iter_mut().for_each(|x| *x = round_f16(*x));
    values_impl(order, hd, &w[..n], v, stride, off, hd, out);
}

/// Scores of one query row for the positions `ps`, into `w[p - ps.start]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores_impl(order: AttnOrder, q: &[f32], k: &[f16], stride: usize, off: usize, scale: f32, ps: Range<usize>, w: &mut [f32]) {
    let hd = q.len();
    // tinyBLAS takes a batch only when the inner size is a multiple of 8; otherwise ggml falls
    // back to its per-row dot product
    let kq_tiled = order == AttnOrder::Batch && hd.is_multiple_of(8);
    let mut kp = vec![0f32; hd]; // [hd]
    for (p, s) in ps.clone().zip(w.iter_mut()) {
        kp.iter_mut().zip(&k[p * stride + off..p * stride + off + hd]).for_each(|(x, y)| *x = y.to_f32());
        let dot = if kq_tiled { dot_tiled(&kp, q) } else { dot_vec(&kp, q) };
        *s = dot * scale;
    }
}

/// The weighted sum of value columns `off..off + width` over the weights `w` (one per position)
/// of a head `hd` wide, into `out[..width]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn values_impl(order: AttnOrder, hd: usize, w: &[f32], v: &[f16], stride: usize, off: usize, width: usize, out: &mut [f32]) {
    // tinyBLAS takes the batch only when the head's rows are a multiple of 4
    if order == AttnOrder::Batch && hd.is_multiple_of(4) {
        // lane p % 8 of every output element chains over positions p, p+8, …
        let mut acc = vec![0f32; 8 * width]; // [8 lanes × width]
        for (p, &wp) in w.iter().enumerate() {
            let vp = &v[p * stride + off..p * stride + off + width]; // [width]
            let a = &mut acc[(p % 8) * width..(p % 8 + 1) * width];
            for (a, x) in a.iter_mut().zip(vp) {
                *a = x.to_f32().mul_add(wp, *a);
            }
        }
        let lane = |l: usize, d: usize| acc[l * width + d];
        for (d, o) in out[..width].iter_mut().enumerate() {
            let r = [lane(4, d) + lane(0, d), lane(5, d) + lane(1, d), lane(6, d) + lane(2, d), lane(7, d) + lane(3, d)];
            *o = (r[0] + r[2]) + (r[1] + r[3]);
        }
    } else {
        // ggml_vec_dot_f16 over the (zero-padded, multiple of 32) positions: accumulator
        // (p / 8) % 4, lane p % 8
        let mut acc = vec![0f32; 32 * width]; // [4 accumulators × 8 lanes × width]
        for (p, &wp) in w.iter().enumerate() {
            let vp = &v[p * stride + off..p * stride + off + width]; // [width]
            let slot = ((p / 8) % 4) * 8 + p % 8;
            let a = &mut acc[slot * width..(slot + 1) * width];
            for (a, x) in a.iter_mut().zip(vp) {
                *a = x.to_f32().mul_add(wp, *a);
            }
        }
        let at = |j: usize, l: usize, d: usize| acc[(j * 8 + l) * width + d];
        for (d, o) in out[..width].iter_mut().enumerate() {
            let mut x0 = [0f32; 8];
            for (l, x) in x0.iter_mut().enumerate() {
                *x = (at(0, l, d) + at(2, l, d)) + (at(1, l, d) + at(3, l, d));
            }
            let t0 = [x0[0] + x0[4], x0[1] + x0[5], x0[2] + x0[6], x0[3] + x0[7]];
            *o = (t0[0] + t0[1]) + (t0[2] + t0[3]);
        }
    }
}

/// RMS norm as ggml: squares summed in f64, the mean and the scale in f32, then `x·scale·w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut sum = 0f64;
        for v in xr {
            sum += f64::from(v * v);
        }
        let mean = (sum / d as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// RoPE angles of one position as ggml's cache: `θ₀ = pos`, `θᵢ₊₁ = θᵢ · base^(-2/dims)` in f32,
/// then libm `cosf`/`sinf`. Returns `(cos, sin)` per pair.
pub fn rope_angles(pos: usize, pairs: usize, theta_scale: f32, out: &mut Vec<(f32, f32)>) {
    out.clear();
    let mut theta = pos as f32;
    for _ in 0..pairs {
        out.push((theta.cos(), theta.sin()));
        theta *= theta_scale;
    }
}

/// Rotates pair `(x0, x1)` as ggml's `rotate_pairs` compiled with FMA contraction.
#[inline(always)]
pub fn rotate(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

/// Rotates every head of `rows` (heads of `hd` values) by `angles`; pair `i` is
/// `(i·step, i·step + off)`: `step = 2, off = 1` for interleaved pairs, `step = 1, off = hd/2` for
/// halves.
pub fn rope_heads(rows: &mut [f32], hd: usize, angles: &[(f32, f32)], step: usize, off: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { rope_heads_fma(rows, hd, angles, step, off) };
    }
    rope_heads_impl(rows, hd, angles, step, off)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rope_heads_fma(rows: &mut [f32], hd: usize, angles: &[(f32, f32)], step: usize, off: usize) {
    rope_heads_impl(rows, hd, angles, step, off)
}

#[inline(always)]
fn rope_heads_impl(rows: &mut [f32], hd: usize, angles: &[(f32, f32)], step: usize, off: usize) {
    for head in rows.chunks_exact_mut(hd) {
        for (i, &(cos, sin)) in angles.iter().enumerate() {
            let (a, b) = (i * step, i * step + off);
            (head[a], head[b]) = rotate(head[a], head[b], cos, sin);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// ggml's AVX2 `ggml_v_expf`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn v_expf(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
        );
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
        let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_cmp_ps(absn, _mm256_set1_ps(126.0), _CMP_GT_OQ);
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(_mm256_set1_ps(f32::from_bits(0x3c07_2010)), b, _mm256_set1_ps(f32::from_bits(0x3d2b_9f17))),
                u,
                _mm256_fmadd_ps(_mm256_set1_ps(f32::from_bits(0x3e2a_af33)), b, _mm256_set1_ps(f32::from_bits(0x3eff_fedb))),
            ),
            u,
            _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
        );
        if _mm256_movemask_ps(c) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_cmp_ps(absn, _mm256_set1_ps(192.0), _CMP_GT_OQ);
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`, as `hsum8`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(a: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    /// Eight f16 values from `p` as f32.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn ld(p: *const half::f16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at p.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// The final reductions of eight dot products at once: `a[r]` holds position `r`'s eight
    /// lanes, and each is summed exactly as one dot product of that order sums them (the same
    /// additions, vectorised across positions); the eight sums come back in position order.
    /// tinyBLAS ([`hsum`]): `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`; `ggml_vec_dot_f16`
    /// ([`dot_vec`] with no tail): `((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7))`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn reduce_each(order: super::AttnOrder, a: [__m256; 8]) -> __m256 {
        // [lo(a_r) + hi(a_r) | lo(a_r+1) + hi(a_r+1)]: four sums s0..s3 per position
        let s4 = |x: __m256, y: __m256| _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x, y), _mm256_permute2f128_ps::<0x31>(x, y));
        let (u01, u23, u45, u67) = (s4(a[0], a[1]), s4(a[2], a[3]), s4(a[4], a[5]), s4(a[6], a[7]));
        // two sums per position, for positions (0, 2 | 1, 3) and (4, 6 | 5, 7)
        let s2 = |x: __m256, y: __m256| match order {
            super::AttnOrder::Batch => _mm256_add_ps(_mm256_shuffle_ps::<0x44>(x, y), _mm256_shuffle_ps::<0xee>(x, y)), // s0+s2, s1+s3
            super::AttnOrder::Single => _mm256_add_ps(_mm256_shuffle_ps::<0x88>(x, y), _mm256_shuffle_ps::<0xdd>(x, y)), // s0+s1, s2+s3
        };
        let (v0, v1) = (s2(u01, u23), s2(u45, u67));
        // the two added: positions [0, 2, 4, 6 | 1, 3, 5, 7], then put in order
        let r = _mm256_add_ps(_mm256_shuffle_ps::<0x88>(v0, v1), _mm256_shuffle_ps::<0xdd>(v0, v1));
        _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// One dot product in `ggml_vec_dot_f16`'s order (`super::dot_vec`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_vec(kr: *const half::f16, qp: *const f32, hd: usize) -> f32 {
        // SAFETY: the caller guarantees hd readable floats at kr and qp.
        unsafe {
            let np = hd / 32 * 32;
            let mut a = [_mm256_setzero_ps(); 4];
            for c in (0..np).step_by(32) {
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = _mm256_fmadd_ps(ld(kr.add(c + 8 * j)), _mm256_loadu_ps(qp.add(c + 8 * j)), *aj);
                }
            }
            let x0 = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
            let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps(x0, 1));
            let mut t = [0f32; 4];
            _mm_storeu_ps(t.as_mut_ptr(), t0);
            let mut sum = f64::from((t[0] + t[1]) + (t[2] + t[3]));
            for e in np..hd {
                sum += f64::from((*kr.add(e)).to_f32() * *qp.add(e));
            }
            sum as f32
        }
    }

    /// One dot product in tinyBLAS's order (`super::dot_tiled`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_tiled(kr: *const half::f16, qp: *const f32, hd: usize) -> f32 {
        // SAFETY: the caller guarantees hd readable floats at kr and qp.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for c in (0..hd).step_by(8) {
                acc = _mm256_fmadd_ps(ld(kr.add(c)), _mm256_loadu_ps(qp.add(c)), acc);
            }
            hsum(acc)
        }
    }

    thread_local! {
        /// Per thread: the rows' value accumulators ([`values`]).
        static ACC: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Positions per tile: one tile of keys (or values) stays in L1 while every row uses it.
    /// Rows that share each tile while it is in cache are what make long contexts affordable: a
    /// lone row reads the whole head from memory.
    const TILE: usize = 64;

    /// `super::scores_impl` for each row of `q` and the positions `ps` (below each row's count),
    /// one tile of keys at a time: `w[j·ws + p - ps.start]`. `hd` must be a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores(order: super::AttnOrder, q: &[f32], ns: &[usize], k: &[half::f16], stride: usize, off: usize, scale: f32, ps: std::ops::Range<usize>, w: &mut [f32], ws: usize) {
        let hd = q.len() / ns.len().max(1);
        let tiled = order == super::AttnOrder::Batch;
        let last = ns.iter().map(|&n| n.min(ps.end)).max().unwrap_or(0);
        // SAFETY (whole block): the caller checked (last-1)·stride + off + hd <= k.len(),
        // q.len() = m·hd and that row j of w holds ps.len() entries from j·ws; hd % 8 == 0.
        unsafe {
            let kp = k.as_ptr().add(off);
            for p0 in (ps.start..last).step_by(TILE) {
                for (j, &n) in ns.iter().enumerate() {
                    let (qp, wr) = (q.as_ptr().add(j * hd), w.as_mut_ptr().add(j * ws));
                    let end = n.min(p0 + TILE).min(ps.end);
                    let mut p = p0;
                    // eight positions at a time (Single: only without an f64 tail)
                    while p + 8 <= end && (tiled || hd.is_multiple_of(32)) {
                        let mut a = [_mm256_setzero_ps(); 8];
                        if tiled {
                            for c in (0..hd).step_by(8) {
                                let qc = _mm256_loadu_ps(qp.add(c));
                                for (r, ar) in a.iter_mut().enumerate() {
                                    *ar = _mm256_fmadd_ps(ld(kp.add((p + r) * stride + c)), qc, *ar);
                                }
                            }
                        } else {
                            for (r, ar) in a.iter_mut().enumerate() {
                                let kr = kp.add((p + r) * stride);
                                let mut x = [_mm256_setzero_ps(); 4];
                                for c in (0..hd).step_by(32) {
                                    for (j, xj) in x.iter_mut().enumerate() {
                                        *xj = _mm256_fmadd_ps(ld(kr.add(c + 8 * j)), _mm256_loadu_ps(qp.add(c + 8 * j)), *xj);
                                    }
                                }
                                *ar = _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]));
                            }
                        }
                        _mm256_storeu_ps(wr.add(p - ps.start), _mm256_mul_ps(reduce_each(order, a), _mm256_set1_ps(scale)));
                        p += 8;
                    }
                    for p in p..end {
                        let kr = kp.add(p * stride);
                        *wr.add(p - ps.start) = if tiled { dot_tiled(kr, qp, hd) } else { dot_vec(kr, qp, hd) } * scale;
                    }
                }
            }
        }
    }

    /// `super::softmax` then f16 rounding, on a row whose length is a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax_f16(w: &mut [f32]) {
        let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let wp = w.as_mut_ptr();
        // SAFETY: w.len() is a multiple of 8, so every 8-wide access is inside it.
        unsafe {
            let mut sum = 0f64;
            for c in (0..w.len()).step_by(8) {
                let e = v_expf(_mm256_sub_ps(_mm256_loadu_ps(wp.add(c)), _mm256_set1_ps(max)));
                _mm256_storeu_ps(wp.add(c), e);
                sum += f64::from(hsum(e));
            }
            let inv = _mm256_set1_ps((1.0 / sum) as f32);
            for c in (0..w.len()).step_by(8) {
                let x = _mm256_mul_ps(_mm256_loadu_ps(wp.add(c)), inv);
                _mm256_storeu_ps(wp.add(c), _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x)));
            }
        }
    }

    /// `super::values_impl` for each row of weights (row `j` at `w[j·ws..]`, `ns[j]` of them) and
    /// the value columns `off..off + width`, one tile of values at a time, into
    /// `out[j·width..][..width]`. `width` must be a multiple of 8 (and the head's width too).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn values(order: super::AttnOrder, w: &[f32], ws: usize, ns: &[usize], v: &[half::f16], stride: usize, off: usize, width: usize, out: &mut [f32]) {
        let m = ns.len();
        let nmax = ns.iter().copied().max().unwrap_or(0);
        let tiled = order == super::AttnOrder::Batch;
        // value lanes per row: position p feeds accumulator p % lanes (tinyBLAS 8, ggml_vec_dot_f16 32)
        let lanes = if tiled { 8 } else { 32 };
        ACC.with(|buf| {
            let acc = &mut *buf.borrow_mut();
            acc.clear();
            acc.resize(m * lanes * width, 0.0); // [m × lanes × width]
            // SAFETY (whole block): the caller checked (nmax-1)·stride + off + width <= v.len(),
            // j·ws + ns[j] <= w.len() and out.len() >= m·width; every row of acc has lanes·width
            // entries; width % 8 == 0; tiles start at multiples of 32.
            unsafe {
                let vp = v.as_ptr().add(off);
                // lane group g of a row takes positions p with (p / 8) % (lanes / 8) == g, lane
                // p % 8, in increasing p. Single's 32 lanes take a longer tile, so each accumulator
                // chains over several positions between its loads and stores (the tile then sits
                // in L2).
                let vtile = if tiled { TILE } else { 4 * TILE };
                for p0 in (0..nmax).step_by(vtile) {
                    for (j, &n) in ns.iter().enumerate() {
                        let end = n.min(p0 + vtile);
                        let wr = w.as_ptr().add(j * ws);
                        for g in 0..lanes / 8 {
                            let ap = acc.as_mut_ptr().add((j * lanes + g * 8) * width);
                            for c in (0..width).step_by(8) {
                                let mut a = [_mm256_setzero_ps(); 8];
                                for (l, al) in a.iter_mut().enumerate() {
                                    *al = _mm256_loadu_ps(ap.add(l * width + c));
                                }
                                let mut p = p0 + 8 * g;
                                while p + 8 <= end {
                                    let (vr, wv) = (vp.add(p * stride + c), wr.add(p));
                                    for (l, al) in a.iter_mut().enumerate() {
                                        *al = _mm256_fmadd_ps(ld(vr.add(l * stride)), _mm256_set1_ps(*wv.add(l)), *al);
                                    }
                                    p += lanes;
                                }
                                // a last group of fewer than 8 positions
                                for (l, al) in a.iter_mut().enumerate() {
                                    if p + l < end {
                                        let x = ld(vp.add((p + l) * stride + c));
                                        *al = _mm256_fmadd_ps(x, _mm256_set1_ps(*wr.add(p + l)), *al);
                                    }
                                }
                                for (l, al) in a.iter().enumerate() {
                                    _mm256_storeu_ps(ap.add(l * width + c), *al);
                                }
                            }
                        }
                    }
                }
                // lanes reduced as each order does
                for j in 0..m {
                    let ap = acc.as_ptr().add(j * lanes * width);
                    let slot = |s: usize, c: usize| _mm256_loadu_ps(ap.add(s * width + c));
                    let op = out.as_mut_ptr().add(j * width);
                    for c in (0..width).step_by(8) {
                        let r = if tiled {
                            let r0 = _mm256_add_ps(slot(4, c), slot(0, c));
                            let r1 = _mm256_add_ps(slot(5, c), slot(1, c));
                            let r2 = _mm256_add_ps(slot(6, c), slot(2, c));
                            let r3 = _mm256_add_ps(slot(7, c), slot(3, c));
                            _mm256_add_ps(_mm256_add_ps(r0, r2), _mm256_add_ps(r1, r3))
                        } else {
                            let x0: [__m256; 8] = std::array::from_fn(|l| {
                                _mm256_add_ps(_mm256_add_ps(slot(l, c), slot(16 + l, c)), _mm256_add_ps(slot(8 + l, c), slot(24 + l, c)))
                            });
                            let t0 = _mm256_add_ps(x0[0], x0[4]);
                            let t1 = _mm256_add_ps(x0[1], x0[5]);
                            let t2 = _mm256_add_ps(x0[2], x0[6]);
                            let t3 = _mm256_add_ps(x0[3], x0[7]);
                            _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3))
                        };
                        _mm256_storeu_ps(op.add(c), r);
                    }
                }
            }
        })
    }

    /// `out = v_expf(x - max)` for 8 values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8_sub(x: &[f32], max: f32, out: &mut [f32; 8]) {
        assert!(x.len() >= 8);
        // SAFETY: 8 readable and 8 writable floats (asserted / by type).
        unsafe {
            let v = v_expf(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_set1_ps(max)));
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        }
    }

    /// ggml's `ggml_vec_swiglu_f32` with AVX2: `x ← x / (1 + exp(-x)) · g`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(x: &mut [f32], g: &[f32]) {
        let n = x.len().min(g.len());
        let n8 = n / 8 * 8;
        // SAFETY: every access is below n8 <= len of both slices.
        unsafe {
            let one = _mm256_set1_ps(1.0);
            let mut i = 0;
            while i < n8 {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                let e = v_expf(_mm256_sub_ps(_mm256_setzero_ps(), xv));
                let s = _mm256_div_ps(xv, _mm256_add_ps(one, e));
                _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_mul_ps(s, _mm256_loadu_ps(g.as_ptr().add(i))));
                i += 8;
            }
        }
        for i in n8..n {
            x[i] = x[i] / (1.0 + (-x[i]).exp()) * g[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xs() -> Vec<f32> {
        let mut v = vec![0.0, -0.0, 1.0, -1.0, 88.0, -88.0, 100.0, -100.0, 130.0, -130.0, 200.0, -200.0];
        v.extend([f32::NEG_INFINITY, f32::INFINITY, 1e-30, -87.3, 87.3, 0.5, -0.5]);
        let mut s = 0x1234_5678u32;
        for _ in 0..20000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            v.push((s as f32 / u32::MAX as f32 - 0.5) * 60.0);
        }
        while v.len() % 8 != 0 {
            v.push(0.25);
        }
        v
    }

    #[test]
    fn polynomial_exp_is_close_to_libm() {
        for x in xs() {
            let (a, b) = (v_expf(x), x.exp());
            if b.is_finite() && b > 1e-37 {
                assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
            } else if b == 0.0 {
                assert!(a < 1e-37, "{x}: {a}");
            }
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_forms_equal_the_scalar_forms() {
        if !avx2() {
            return;
        }
        let x = xs();
        for c in x.chunks_exact(8) {
            let mut out = [0f32; 8];
            // SAFETY: checked above that the CPU has AVX2 and FMA.
            unsafe { x86::exp8_sub(c, 0.75, &mut out) };
            for (o, v) in out.iter().zip(c) {
                assert_eq!(o.to_bits(), v_expf(v - 0.75).to_bits(), "{v}");
            }
        }
        let g: Vec<f32> = x.iter().map(|v| v * 0.37 + 0.1).collect();
        let mut a = x.clone();
        // SAFETY: as above.
        unsafe { x86::swiglu(&mut a, &g) };
        for i in 0..x.len() {
            let want = x[i] / (1.0 + v_expf(0.0 - x[i])) * g[i];
            assert!(a[i].to_bits() == want.to_bits() || (a[i].is_nan() && want.is_nan()), "{}", x[i]);
        }
    }

    /// f16-representable values in (-2, 2) from a xorshift generator.
    fn f16_values(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            round_f16((seed as f32 / u32::MAX as f32 - 0.5) * 4.0)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_attention_equals_the_scalar_form() {
        if !avx2() {
            return;
        }
        let mut r = f16_values(99);
        // rows with position counts that start and end inside and across tiles and lane groups
        let cases: [(usize, usize, &[usize]); 7] = [
            (64, 192, &[1]),
            (64, 192, &[7]),
            (64, 192, &[77, 77, 77, 78, 78, 78]),
            (32, 64, &[40, 41, 42, 43]),
            (96, 96, &[300]),
            (8, 24, &[33, 1, 64, 65, 130]),
            (64, 128, &[190, 191, 192, 193, 194, 195, 196, 197, 255, 256, 257]),
        ];
        for (hd, stride, ns) in cases {
            let n = ns.iter().copied().max().unwrap();
            let k: Vec<f16> = (0..n * stride).map(|_| f16::from_f32(r())).collect();
            let v: Vec<f16> = (0..n * stride).map(|_| f16::from_f32(r())).collect();
            let q: Vec<f32> = (0..ns.len() * hd).map(|_| r()).collect();
            for order in [AttnOrder::Batch, AttnOrder::Single] {
                let (mut a, mut b) = (vec![0f32; ns.len() * hd], vec![0f32; ns.len() * hd]);
                for ((qr, &n), o) in q.chunks_exact(hd).zip(ns).zip(a.chunks_exact_mut(hd)) {
                    attend_impl(order, qr, &k, &v, stride, stride - hd, n, 0.125, o);
                }
                // the AVX2 forms: checked above that the CPU has AVX2, FMA and F16C
                attend_rows(order, &q, ns, &k, &v, stride, stride - hd, 0.125, &mut b);
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "{order:?} hd={hd} ns={ns:?} row {} d={}: {x} vs {y}", i / hd, i % hd);
                }
            }
        }
    }

    /// The three steps, split as a single token's attention is across threads (scores by
    /// position chunks, values by column slices), give each row the same bits as the row alone.
    #[test]
    fn split_attention_equals_the_whole() {
        let mut r = f16_values(7);
        for (hd, stride, n, chunk) in [(64usize, 192, 300usize, 40usize), (64, 192, 1, 256), (32, 64, 77, 64), (8, 24, 33, 8), (12, 24, 50, 16)] {
            let m = 3;
            let k: Vec<f16> = (0..n * stride).map(|_| f16::from_f32(r())).collect();
            let v: Vec<f16> = (0..n * stride).map(|_| f16::from_f32(r())).collect();
            let q: Vec<f32> = (0..m * hd).map(|_| r()).collect();
            let ns = vec![n; m];
            let n8 = n.div_ceil(8) * 8;
            for order in [AttnOrder::Batch, AttnOrder::Single] {
                let mut whole = vec![0f32; m * hd];
                for (qr, o) in q.chunks_exact(hd).zip(whole.chunks_exact_mut(hd)) {
                    attend_impl(order, qr, &k, &v, stride, stride - hd, n, 0.125, o);
                }
                let mut w = vec![f32::NEG_INFINITY; m * n8];
                for p0 in (0..n).step_by(chunk) {
                    let mut part = vec![f32::NEG_INFINITY; m * chunk];
                    attend_scores(order, &q, &ns, &k, stride, stride - hd, 0.125, p0..(p0 + chunk).min(n), &mut part, chunk);
                    for j in 0..m {
                        let len = chunk.min(n - p0);
                        w[j * n8 + p0..j * n8 + p0 + len].copy_from_slice(&part[j * chunk..j * chunk + len]);
                    }
                }
                w.chunks_exact_mut(n8).for_each(|row| attend_softmax(row, n));
                let width = if hd.is_multiple_of(8) { 8 } else { hd };
                let mut split = vec![0f32; m * hd];
                for c in (0..hd).step_by(width) {
                    let mut out = vec![0f32; m * width];
                    attend_values(order, hd, &w, n8, &ns, &v, stride, stride - hd + c, width, &mut out);
                    for j in 0..m {
                        split[j * hd + c..j * hd + c + width].copy_from_slice(&out[j * width..(j + 1) * width]);
                    }
                }
                let mut rows = vec![0f32; m * hd];
                attend_rows(order, &q, &ns, &k, &v, stride, stride - hd, 0.125, &mut rows);
                for (i, ((x, y), z)) in whole.iter().zip(&split).zip(&rows).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "split {order:?} hd={hd} n={n} row {} d={}: {x} vs {y}", i / hd, i % hd);
                    assert_eq!(x.to_bits(), z.to_bits(), "rows {order:?} hd={hd} n={n} row {} d={}: {x} vs {z}", i / hd, i % hd);
                }
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut w = vec![1.0, 2.0, 3.0, f32::NEG_INFINITY, 0.5, 0.0, -1.0, 2.5, 1.5, f32::NEG_INFINITY];
        softmax(&mut w);
        let s: f32 = w.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert_eq!(w[3], 0.0);
        assert_eq!(w[9], 0.0);
    }

    #[test]
    fn dot_orders_follow_their_lane_layouts() {
        let a: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..64).map(|i| 1.0 - i as f32 * 7e-4).collect();
        // tiled: 8 lanes of 8 fmas each
        let mut lanes = [0f32; 8];
        for i in 0..64 {
            lanes[i % 8] = a[i].mul_add(b[i], lanes[i % 8]);
        }
        assert_eq!(dot_tiled(&a, &b).to_bits(), hsum8(&lanes).to_bits());
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(dot_vec(&a, &b)) - exact).abs() < 1e-4);
        // a tail past the last full chunk is summed in f64
        let t = dot_vec(&a[..40], &b[..40]);
        assert!((f64::from(t) - a[..40].iter().zip(&b[..40]).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>()).abs() < 1e-4);
    }

    #[test]
    fn hsum8_pairs_lanes_as_ggml() {
        let a = [1e8f32, 1.0, -1e8, 1.0, 1.0, 0.0, 0.0, 0.0];
        // (a0+a4) + (a2+a6) = (1e8+1) + (-1e8) = 0 in f32; (a1+a5)+(a3+a7) = 2
        assert_eq!(hsum8(&a), 2.0);
    }
}
