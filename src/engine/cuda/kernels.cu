// The GPU engine's kernels: everything of the forward pass except the dense matrix products
// (cuBLAS). Compiled at run time by NVRTC with no CUDA headers; `LLM_WT` picks the storage type of
// weights and GEMM inputs (0 = f32, 1 = f16, 2 = bf16), `LLM_KT` the KV cache's.
//
// Batch invariance: every kernel computes a token's values from that token's inputs (and its own
// sequence's cache) with a reduction order fixed by the model's sizes, never by the batch: a
// block reduces one row, attention walks keys in tiles aligned to position 0, and the partial
// softmax of the key splits is merged in split order.
//
// Each kernel takes one argument, a struct that `src/engine/cuda/args.rs` mirrors field for field.
// `LLM_KERNEL(name, Args)` declares it; for the CPU emulation the tests run (`emu.h`, included
// before this file with `LLM_HOST` set) it is a plain function.
//
// `LLM_HD`, the model's head size, keeps only the attention and decode-step kernels for heads of
// that size (0: every size): those are most of the compile time, and a model runs one size.

#ifndef LLM_WT
#define LLM_WT 0
#endif
#ifndef LLM_KT
#define LLM_KT LLM_WT
#endif
#ifndef LLM_HD
#define LLM_HD 0
#endif
// whether this compile keeps the kernels for heads of size h (0: the any-size attention, for
// sizes with no kernel of their own)
#define LLM_FOR_HD(h) (LLM_HD == 0 || LLM_HD == (h) || ((h) == 0 && LLM_HD != 64 && LLM_HD != 128))

#ifndef LLM_HOST
#define LLM_KERNEL(name, Args) extern "C" __global__ void name(const Args a)
#define LLM_DYN_SHARED(name) extern __shared__ float name[]
#define LLM_INF __int_as_float(0x7f800000)
typedef unsigned short u16;

__device__ __forceinline__ float bf16_to_f(u16 x) { return __int_as_float(((unsigned)x) << 16); }
__device__ __forceinline__ u16 f_to_bf16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest even
  return (u16)(u >> 16);
}
__device__ __forceinline__ float f16_to_f(u16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
  return f;
}
__device__ __forceinline__ u16 f_to_f16(float f) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#endif

#define FULL_MASK 0xffffffffu
#define LD_BATCH 8  // loads a thread issues together where a loop would wait for each in turn
#define KV_BS 16  // positions per KV cache block

// Programmatic dependent launch (sm_90 and newer, when the host launches a kernel with it): a
// kernel may start while the one before it finishes. `pdl_wait` holds it until that kernel has
// finished and its writes are visible; `pdl_trigger` lets the next kernel start. Every kernel
// waits before it touches anything but the weights (which nothing writes), so each kernel still
// sees all earlier kernels' writes, and triggers only then: one kernel starts ahead (the decode
// product loading its weights) while the one before runs, never a chain of them holding the
// GPU's blocks. Launched without it, both do nothing.
#if defined(LLM_HOST) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 900
__device__ __forceinline__ void pdl_wait() {}
__device__ __forceinline__ void pdl_trigger() {}
#else
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
#endif

// The decode step's bodies (products, attention) run as kernels of their own and as phases of
// `decode_step`, which runs a whole step in one launch. So they take their block's coordinates
// (`Blk`: the launch's, or a phase's virtual grid) and a `wait` called where they first read what
// the step wrote before: `Pdl` as a kernel of its own, a grid barrier as a phase.
struct Blk { unsigned x, y, z, gx, gy, gz; };
__device__ __forceinline__ Blk launch_block() { return Blk{blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z}; }
struct Pdl {
  __device__ __forceinline__ void operator()() const {
    pdl_wait();
    pdl_trigger();
  }
};

// ── storage types ──
#if LLM_WT == 0
typedef float wt;
__device__ __forceinline__ float w2f(wt x) { return x; }
__device__ __forceinline__ wt f2w(float x) { return x; }
#elif LLM_WT == 1
typedef u16 wt;
__device__ __forceinline__ float w2f(wt x) { return f16_to_f(x); }
__device__ __forceinline__ wt f2w(float x) { return f_to_f16(x); }
#else
typedef u16 wt;
__device__ __forceinline__ float w2f(wt x) { return bf16_to_f(x); }
__device__ __forceinline__ wt f2w(float x) { return f_to_bf16(x); }
#endif

#if LLM_KT == 0
typedef float kt;
__device__ __forceinline__ float k2f(kt x) { return x; }
__device__ __forceinline__ kt f2k(float x) { return x; }
#elif LLM_KT == 1
typedef u16 kt;
__device__ __forceinline__ float k2f(kt x) { return f16_to_f(x); }
__device__ __forceinline__ kt f2k(float x) { return f_to_f16(x); }
#else
typedef u16 kt;
__device__ __forceinline__ float k2f(kt x) { return bf16_to_f(x); }
__device__ __forceinline__ kt f2k(float x) { return f_to_bf16(x); }
#endif

// 16 bytes: a vector load of weights, cached keys or values (V16) or of f32 values (F4). The
// emulation (`emu.h`) checks that each load and store through them is aligned, as the GPU needs.
#ifndef LLM_VEC_CHECKS
#define LLM_VEC_CHECKS(T, N)
#endif
struct alignas(16) V16 {
  unsigned u[4];
  LLM_VEC_CHECKS(V16, 16)
};
struct alignas(16) F4 {
  float v[4];
  LLM_VEC_CHECKS(F4, 16)
};
__device__ __forceinline__ F4 f4(float a, float b, float c, float d) {
  F4 r;
  r.v[0] = a;
  r.v[1] = b;
  r.v[2] = c;
  r.v[3] = d;
  return r;
}
#define KV_VEC (16 / (int)sizeof(kt))  // cached key or value elements per 16-byte load
// `N` 32-bit words of storage type T (0 f32, 1 f16, 2 bf16: LLM_WT's and LLM_KT's values) as floats
template <int T, int N>
__device__ __forceinline__ void unpack_words(const unsigned* u, float* f) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    if constexpr (T == 0) {
      f[i] = __uint_as_float(u[i]);
    } else {
      const u16 lo = (u16)(u[i] & 0xffffu), hi = (u16)(u[i] >> 16);
      f[2 * i] = T == 1 ? f16_to_f(lo) : bf16_to_f(lo);
      f[2 * i + 1] = T == 1 ? f16_to_f(hi) : bf16_to_f(hi);
    }
  }
}
// 16 bytes of storage type T as floats
template <int T>
__device__ __forceinline__ void unpack16(const V16 q, float* f) { unpack_words<T, 4>(q.u, f); }
__device__ __forceinline__ void unpack_k(const V16 q, float* f) { unpack16<LLM_KT>(q, f); }
// A load that reads another block's writes (after its __threadfence) from L2, past L1.
#ifdef LLM_HOST
static inline float ld_l2(const float* p) { return *p; }
#else
__device__ __forceinline__ float ld_l2(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}
#endif

// Attention geometry (mirrored by src/engine/cuda/mod.rs).
#define ATT_WARPS 4       // warps per attention block
#define ATT_ROWS_PER_WARP 4
#define ATT_ROWS 16       // query rows (token × head of one KV group) per block
#define ATT_BK 32         // keys per shared-memory tile
#define ATT_MAXC 8        // head_dim / 32 at most (head_dim ≤ 256)
#define ATT_LOADS 2       // 16-byte loads of keys (and as many of values) in flight per thread
#define ATT_MERGE 4       // splits whose partials a thread loads together when it merges ...
#define ATT_MERGE_E 4     // ... for each of this many output elements

// Sum of a block's `v` (blockDim.x a multiple of 32, ≤ 1024) in a fixed tree order; every thread
// gets the total. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_MASK, t, o);
  return t;
}

// ── formulas the prefill kernels and the decode products' epilogues share ──
// RoPE's rotation of the pair (x0, x1) at position p, frequency f
__device__ __forceinline__ void rope_pair(float& x0, float& x1, int p, float f) {
  float s, c;
  sincosf((float)p * f, &s, &c);
  const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
  x0 = r0;
  x1 = r1;
}
// SwiGLU: silu(g) · u
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }
// The KV cache row of position p of a sequence whose block table is `table` (blocks of KV_BS
// positions; src/engine/cuda/batch.rs, BLOCK, mirrors it)
__device__ __forceinline__ long long kv_slot(const int* table, int p) { return (long long)table[p / KV_BS] * KV_BS + p % KV_BS; }

// ── embedding: x[t, :] = emb[tok[t], :] ──
struct EmbedArgs {
  const wt* emb;   // [vocab × d]
  const int* tok;  // [n]
  float* x;        // [n × d]
  int d;
  int n;
};
LLM_KERNEL(embed, EmbedArgs) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  if (t >= a.n) return;
  const wt* row = a.emb + (long long)a.tok[t] * a.d;
  float* out = a.x + (long long)t * a.d;
  // LD_BATCH loads in flight before their stores (a loop of load-then-store waits out each load)
  for (int i0 = threadIdx.x; i0 < a.d; i0 += LD_BATCH * blockDim.x) {
    wt v[LD_BATCH] = {};
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++)
      if (i0 + u * (int)blockDim.x < a.d) v[u] = row[i0 + u * blockDim.x];
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++)
      if (i0 + u * (int)blockDim.x < a.d) out[i0 + u * blockDim.x] = w2f(v[u]);
  }
}

// ── RMSNorm: out[r, :] = x[src, :] / sqrt(mean(x²) + eps) · w, src = rows ? rows[r] : r ──
struct NormArgs {
  const float* x;    // [* × d]
  const float* w;    // [d]
  const int* rows;   // [n] or null
  wt* out;           // [n × d]
  int d;
  int n;
  float eps;
};
LLM_KERNEL(rms_norm, NormArgs) {
  pdl_wait();
  pdl_trigger();
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  if (r >= a.n) return;
  const int src = a.rows ? a.rows[r] : r;
  const float* xr = a.x + (long long)src * a.d;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < a.d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, scratch);
  const float scale = 1.0f / sqrtf(ss / (float)a.d + a.eps);
  wt* out = a.out + (long long)r * a.d;
  for (int i = threadIdx.x; i < a.d; i += blockDim.x) out[i] = f2w(xr[i] * scale * a.w[i]);
}

// ── q/k/v bias, rotary embedding, and the KV cache write ──
// qkv rows are [q (nh·hd) | k (nkv·hd) | v (nkv·hd)]; q is rotated in place, k and v go to the
// token's cache slot: block tables[blk_off[seq] + pos / KV_BS], row pos % KV_BS. Rotated pairs are
// always (2i, 2i + 1) with frequency inv_freq[i]: a model whose pairs are (i, i + hd/2) has its
// q and k rows permuted on upload (attention's dot products do not see the order).
struct RopeArgs {
  float* qkv;              // [n × (nh + 2·nkv)·hd]
  const float* bias;       // [(nh + 2·nkv)·hd] or null
  const float* inv_freq;   // [hd / 2]
  const int* pos;          // [n]
  const int* seq_of;       // [n]
  const int* blk_off;      // [seqs]
  const int* tables;       // block ids
  kt* kc;                  // this layer's keys:   [blocks × bs × nkv·hd]
  kt* vc;                  // this layer's values: [blocks × bs × nkv·hd]
  int n;
  int nh;
  int nkv;
  int hd;
};
LLM_KERNEL(rope_store, RopeArgs) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  if (t >= a.n) return;
  const int width = (a.nh + 2 * a.nkv) * a.hd, kvd = a.nkv * a.hd;
  float* row = a.qkv + (long long)t * width;
  if (a.bias) {
    for (int i = threadIdx.x; i < width; i += blockDim.x) row[i] += a.bias[i];
    __syncthreads();
  }
  const int p = a.pos[t], hh = a.hd / 2;
  // one thread per rotated pair of the q and k heads
  const int pairs = (a.nh + a.nkv) * hh;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int head = j / hh, i = j % hh;
    float* h = row + head * a.hd;  // k heads follow the q heads
    rope_pair(h[2 * i], h[2 * i + 1], p, a.inv_freq[i]);
  }
  __syncthreads();
  const int seq = a.seq_of[t];
  const long long slot = kv_slot(a.tables + a.blk_off[seq], p);
  kt* kd = a.kc + slot * kvd;
  kt* vd = a.vc + slot * kvd;
  const float* ks = row + a.nh * a.hd;
  const float* vs = ks + kvd;
  for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
    kd[i] = f2k(ks[i]);
    vd[i] = f2k(vs[i]);
  }
}

// ── attention: one block per (query tile, KV head, key split) ──
// A tile is `count` consecutive tokens of one sequence (packed index t0..); its rows are
// (token i, head g of the KV head's group), row = i·group + g, dealt round-robin to the warps
// (row r to warp r % ATT_WARPS), so a decode tile's few rows keep every warp busy. A warp works
// on its rows together, so each key and value element it reads from shared memory serves all of
// them (lane = key for the scores, lane = output element for the values). The block covers keys
// [split·split_len, (split+1)·split_len) up to the tile's last position, 32 keys at a time, the
// next 32 keys' loads in flight while it works on these. With one split (a scoring pass) it
// writes the normalised output itself. With several (a decode step) it leaves, per row, the
// running max m, the sum l of exp(s − m) and the unnormalised Σ exp(s − m)·v; the last of a
// (tile, KV head)'s blocks to finish (a ticket from `counters`, which it resets for the next
// launch) merges the splits in split order: one launch, and the result does not depend on which
// block finished last. The body is compiled for head_dim 64 and 128, and for any (`a.hd`).
struct AttnArgs {
  const float* qkv;       // [n × (nh + 2·nkv)·hd], q rotated
  const kt* kc;           // this layer's keys
  const kt* vc;           // this layer's values
  const int* tiles;       // [n_tiles × 4]: seq, t0, count, unused
  const int* pos;         // [n]
  const int* blk_off;     // [seqs]
  const int* tables;
  float* part_acc;        // [n_tiles × nkv × max_splits × row_stride × hd]
  float* part_ml;         // [n_tiles × nkv × max_splits × row_stride × 2]
  int* counters;          // [n_tiles × nkv], zero between launches
  wt* att;                // [n × nh·hd]
  int n_tiles;
  int nh;
  int nkv;
  int hd;
  int split_len;
  int max_splits;
  int row_stride;         // partial rows per (tile, KV head, split): ≥ a tile's rows
  float scale;
};

// Up to ATT_LOADS 16-byte loads each of keys and values, chunks i0, i0 + blockDim.x, … of the
// 32-key tile from key kb (`chunks` a key).
__device__ __forceinline__ void kv_fetch(const AttnArgs& a, const int* table, int kb, int i0, int total, int chunks, int koff, int kvd, V16* kq, V16* vq) {
#pragma unroll
  for (int u = 0; u < ATT_LOADS; u++) {
    const int i = i0 + u * blockDim.x;
    if (i >= total) break;
    const long long at = kv_slot(table, kb + i / chunks) * kvd + koff + (i % chunks) * KV_VEC;
    kq[u] = *(const V16*)(a.kc + at);
    vq[u] = *(const V16*)(a.vc + at);
  }
}
// ... and their f32 values into the tile's shared rows: K [key × (hd + 4)], V [key × hd]
__device__ __forceinline__ void kv_store(float* Ks, float* Vs, int hd, int i0, int total, int chunks, const V16* kq, const V16* vq) {
#pragma unroll
  for (int u = 0; u < ATT_LOADS; u++) {
    const int i = i0 + u * blockDim.x;
    if (i >= total) break;
    const int j = i / chunks, d0 = (i % chunks) * KV_VEC;
    float kf[KV_VEC], vf[KV_VEC];
    unpack_k(kq[u], kf);
    unpack_k(vq[u], vf);
#pragma unroll
    for (int e = 0; e < KV_VEC; e += 4) {
      *(F4*)(Ks + j * (hd + 4) + d0 + e) = f4(kf[e], kf[e + 1], kf[e + 2], kf[e + 3]);
      *(F4*)(Vs + j * hd + d0 + e) = f4(vf[e], vf[e + 1], vf[e + 2], vf[e + 3]);
    }
  }
}

// The split merge of both attention kernels, run by every block of (tile, KV head) that wrote
// partials for its `rows` rows (the tile's `count` tokens, at consecutive positions up to kmax): it
// makes them visible device-wide and takes a ticket; the last block to do so merges each row's
// splits in split order and writes the normalised output. A thread takes ATT_MERGE_E output
// elements, and for each loads ATT_MERGE splits' m, l and Σ exp(s − m)·v at once, folding them
// into a running max, numerator and denominator: up to ATT_MERGE splits (a context of
// ATT_MERGE · split_len keys) take one round of loads after the ticket.
template <int HD>  // head_dim, or 0: a.hd
__device__ __forceinline__ void merge_splits(const AttnArgs& a, int tile, int kvh, int t0, int count, int rows, int group, int kmax) {
  __shared__ int s_last;
  const int hd = HD ? HD : a.hd;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = a.counters + tile * a.nkv + kvh;
    const int blocks = kmax / a.split_len + 1;  // the splits that hold keys ≤ kmax
    s_last = atomicAdd(counter, 1) == blocks - 1;
    if (s_last) *counter = 0;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  // (other blocks' writes, read from L2)
  const long long first = (long long)(tile * a.nkv + kvh) * a.max_splits;
#pragma unroll 1
  for (int i0 = threadIdx.x; i0 < rows * hd; i0 += ATT_MERGE_E * blockDim.x) {
    float mx[ATT_MERGE_E], num[ATT_MERGE_E], den[ATT_MERGE_E];
    int ns[ATT_MERGE_E];
#pragma unroll
    for (int e = 0; e < ATT_MERGE_E; e++) {
      const int i = i0 + e * blockDim.x;
      mx[e] = -LLM_INF;
      num[e] = 0.0f;
      den[e] = 0.0f;
      ns[e] = i < rows * hd ? (kmax - (count - 1) + i / hd / group) / a.split_len + 1 : 0;  // the row's splits
    }
    int most = 0;
#pragma unroll
    for (int e = 0; e < ATT_MERGE_E; e++) most = max(most, ns[e]);
#pragma unroll 1
    for (int s0 = 0; s0 < most; s0 += ATT_MERGE) {
      float mv[ATT_MERGE_E][ATT_MERGE], lv[ATT_MERGE_E][ATT_MERGE], av[ATT_MERGE_E][ATT_MERGE];
#pragma unroll
      for (int e = 0; e < ATT_MERGE_E; e++) {
        const int i = i0 + e * blockDim.x, r = i / hd, d = i % hd;
#pragma unroll
        for (int u = 0; u < ATT_MERGE; u++) {
          const long long pr = (first + s0 + u) * a.row_stride + r;
          const bool in = s0 + u < ns[e];
          mv[e][u] = in ? ld_l2(a.part_ml + pr * 2) : -LLM_INF;
          lv[e][u] = in ? ld_l2(a.part_ml + pr * 2 + 1) : 0.0f;
          av[e][u] = in ? ld_l2(a.part_acc + pr * hd + d) : 0.0f;
        }
      }
#pragma unroll
      for (int e = 0; e < ATT_MERGE_E; e++) {
        float cmx = mx[e];  // this round's largest max, then every sum rescaled to it
#pragma unroll
        for (int u = 0; u < ATT_MERGE; u++) cmx = fmaxf(cmx, mv[e][u]);
        if (cmx == -LLM_INF) continue;  // no split of these with a visible key (or no element)
        const float corr = expf(mx[e] - cmx);  // 0 while mx was −∞
        num[e] *= corr;
        den[e] *= corr;
#pragma unroll
        for (int u = 0; u < ATT_MERGE; u++) {
          if (mv[e][u] == -LLM_INF) continue;  // a split with no visible key adds nothing
          const float f = expf(mv[e][u] - cmx);
          num[e] += av[e][u] * f;
          den[e] += lv[e][u] * f;
        }
        mx[e] = cmx;
      }
    }
#pragma unroll
    for (int e = 0; e < ATT_MERGE_E; e++) {
      const int i = i0 + e * blockDim.x;
      if (i >= rows * hd) break;
      const int r = i / hd, d = i % hd;
      const int tok = t0 + r / group, head = kvh * group + r % group;
      a.att[(long long)tok * a.nh * hd + head * hd + d] = f2w(num[e] / den[e]);
    }
  }
}

template <int HD>  // head_dim, or 0: a.hd
__device__ __forceinline__ void attention_body(const AttnArgs& a) {
  LLM_DYN_SHARED(smem);
  pdl_wait();
  pdl_trigger();
  const int tile = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  if (tile >= a.n_tiles) return;
  const int seq = a.tiles[4 * tile], t0 = a.tiles[4 * tile + 1], count = a.tiles[4 * tile + 2];
  const int hd = HD ? HD : a.hd;
  constexpr int MAXC = HD ? HD / 32 : ATT_MAXC;  // output elements a lane holds, at most
  const int group = a.nh / a.nkv, nc = hd / 32;
  const int rows = count * group;
  const int kmax = a.pos[t0 + count - 1];
  const int k_lo = split * a.split_len;
  if (k_lo > kmax) return;  // no key of this split is seen: no partials, no ticket
  const int k_hi = min(k_lo + a.split_len - 1, kmax);
  const int width = (a.nh + 2 * a.nkv) * hd, kvd = a.nkv * hd;

  float* Ks = smem;                        // [ATT_BK × (hd + 4)]
  float* Vs = Ks + ATT_BK * (hd + 4);      // [ATT_BK × hd]
  float* Qs = Vs + ATT_BK * hd;            // [ATT_ROWS × hd]
  const int* table = a.tables + a.blk_off[seq];
  const int chunks = hd / KV_VEC;  // 16-byte loads a key (or value) row
  // the first tile's first loads go out with the queries'
  V16 kq[ATT_LOADS], vq[ATT_LOADS];
  kv_fetch(a, table, k_lo, threadIdx.x, min(ATT_BK, k_hi - k_lo + 1) * chunks, chunks, kvh * hd, kvd, kq, vq);
  for (int i = 4 * threadIdx.x; i < rows * hd; i += 4 * blockDim.x) {
    const int r = i / hd, d = i % hd;
    const int tok = t0 + r / group, head = kvh * group + r % group;
    *(F4*)(Qs + i) = *(const F4*)(a.qkv + (long long)tok * width + head * hd + d);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // this warp's rows: warp, warp + ATT_WARPS, ... below `rows` (uniform across the warp)
  const int nr = warp < rows ? (rows - warp + ATT_WARPS - 1) / ATT_WARPS : 0;
  float m[ATT_ROWS_PER_WARP], l[ATT_ROWS_PER_WARP], acc[ATT_ROWS_PER_WARP][MAXC];
  int qpos[ATT_ROWS_PER_WARP];
#pragma unroll
  for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
    m[j] = -LLM_INF;
    l[j] = 0.0f;
    qpos[j] = j < nr ? a.pos[t0 + (j * ATT_WARPS + warp) / group] : -1;
#pragma unroll
    for (int c = 0; c < MAXC; c++) acc[j][c] = 0.0f;
  }
  for (int kb = k_lo; kb <= k_hi; kb += ATT_BK) {
    const int nk = min(ATT_BK, k_hi - kb + 1), here = nk * chunks;
    __syncthreads();
    kv_store(Ks, Vs, hd, threadIdx.x, here, chunks, kq, vq);
    // the rest of a tile wider than one round of loads (f32, or a wide head)
    for (int i0 = threadIdx.x + ATT_LOADS * blockDim.x; i0 < here; i0 += ATT_LOADS * blockDim.x) {
      kv_fetch(a, table, kb, i0, here, chunks, kvh * hd, kvd, kq, vq);
      kv_store(Ks, Vs, hd, i0, here, chunks, kq, vq);
    }
    __syncthreads();
    // the next tile's first loads, in flight during this tile's arithmetic
    if (kb + ATT_BK <= k_hi) kv_fetch(a, table, kb + ATT_BK, threadIdx.x, min(ATT_BK, k_hi - kb - ATT_BK + 1) * chunks, chunks, kvh * hd, kvd, kq, vq);
    if (nr == 0) continue;  // uniform; the next tile's barrier is still reached
    // lane = key: its scores against all the warp's rows, each key element read once
    const int key = kb + lane;
    float s[ATT_ROWS_PER_WARP], p[ATT_ROWS_PER_WARP];
    bool valid[ATT_ROWS_PER_WARP], live[ATT_ROWS_PER_WARP];
#pragma unroll
    for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
      valid[j] = j < nr && lane < nk && key <= qpos[j];
      s[j] = -LLM_INF;
    }
    if (lane < nk) {
      float dot[ATT_ROWS_PER_WARP];
#pragma unroll
      for (int j = 0; j < ATT_ROWS_PER_WARP; j++) dot[j] = 0.0f;
      const float* k = Ks + lane * (hd + 4);
#pragma unroll(HD ? HD / 4 : 1)
      for (int d = 0; d < hd; d += 4) {
        const F4 kd = *(const F4*)(k + d);
#pragma unroll
        for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
          if (j >= nr) break;  // uniform
          const F4 q = *(const F4*)(Qs + (j * ATT_WARPS + warp) * hd + d);
#pragma unroll
          for (int e = 0; e < 4; e++) dot[j] += q.v[e] * kd.v[e];
        }
      }
#pragma unroll
      for (int j = 0; j < ATT_ROWS_PER_WARP; j++)
        if (valid[j]) s[j] = dot[j] * a.scale;
    }
    // per row: the running max and sum, rescaled (online softmax)
#pragma unroll
    for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
      p[j] = 0.0f;
      live[j] = false;
      if (j >= nr) continue;  // uniform
      float mx = s[j];
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, o));
      const float new_m = fmaxf(m[j], mx);
      if (new_m == -LLM_INF) continue;  // no visible key yet (uniform: mx is warp-wide)
      live[j] = true;
      p[j] = valid[j] ? expf(s[j] - new_m) : 0.0f;
      const float corr = expf(m[j] - new_m);  // 0 while m was −∞
      float ps = p[j];
      for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(FULL_MASK, ps, o);
      l[j] = l[j] * corr + ps;
#pragma unroll
      for (int c = 0; c < MAXC; c++) acc[j][c] *= corr;
      m[j] = new_m;
    }
    // lane = output element: each value element read once for all the warp's rows (unrolled by
    // 8: several keys' loads and shuffles in flight at once)
#pragma unroll 8
    for (int kk = 0; kk < nk; kk++) {
      float v[MAXC];
#pragma unroll
      for (int c = 0; c < MAXC; c++) v[c] = c < nc ? Vs[kk * hd + lane + 32 * c] : 0.0f;
#pragma unroll
      for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
        if (!live[j]) continue;  // uniform
        const float pk = __shfl_sync(FULL_MASK, p[j], kk);
#pragma unroll
        for (int c = 0; c < MAXC; c++)
          if (c < nc) acc[j][c] += pk * v[c];
      }
    }
  }
  if (a.max_splits == 1) {  // every key is this block's: the output, as the merge would make it
#pragma unroll
    for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
      const int r = j * ATT_WARPS + warp;
      if (r >= rows) continue;
      const int tok = t0 + r / group, head = kvh * group + r % group;
#pragma unroll
      for (int c = 0; c < MAXC; c++)
        if (c < nc) a.att[(long long)tok * a.nh * hd + head * hd + lane + 32 * c] = f2w(acc[j][c] / l[j]);
    }
    return;
  }
  const long long base = ((long long)(tile * a.nkv + kvh) * a.max_splits + split) * a.row_stride;
#pragma unroll
  for (int j = 0; j < ATT_ROWS_PER_WARP; j++) {
    const int r = j * ATT_WARPS + warp;
    if (r >= rows) continue;
#pragma unroll
    for (int c = 0; c < MAXC; c++)
      if (c < nc) a.part_acc[(base + r) * hd + lane + 32 * c] = acc[j][c];
    if (lane == 0) {
      a.part_ml[(base + r) * 2] = m[j];
      a.part_ml[(base + r) * 2 + 1] = l[j];
    }
  }
  merge_splits<HD>(a, tile, kvh, t0, count, rows, group, kmax);
}
#if LLM_FOR_HD(0)
LLM_KERNEL(attention, AttnArgs) { attention_body<0>(a); }
#endif
#if LLM_FOR_HD(64)
LLM_KERNEL(attention_hd64, AttnArgs) { attention_body<64>(a); }
#endif
#if LLM_FOR_HD(128)
LLM_KERNEL(attention_hd128, AttnArgs) { attention_body<128>(a); }
#endif

// ── decode attention: one block per (token, KV head, key split), each warp on its own keys ──
// A decode tile is one token, so a block's rows are the token's `group` query heads, and every
// key of its split is visible to all of them. Warp w of W takes the split's 32-key tiles w,
// w + W, …: it copies a tile's keys and values into its own shared memory (asynchronously where
// the GPU can, so no registers wait on the loads), scores every row against lane = key, then
// accumulates with lane = output elements, each value read once for all the rows. The warps'
// partial softmaxes are merged in warp order through shared memory; then, as in `attention`, one
// split writes the output and several leave partials for the last block's merge. Unlike
// `attention` (warps on rows, the block on one 32-key tile at a time), no warp waits for another
// warp's tile, and a block of W warps covers 32·W keys at once. Compiled for head_dim 32, 64, 128.
#define DEC_TILE 32  // keys a warp copies and scores at once
#define DEC_PS (ATT_ROWS + 4)  // a key's p for the rows in shared memory (padded: fewer bank conflicts)

struct alignas(8) V8 {
  unsigned u[2];
  LLM_VEC_CHECKS(V8, 8)
};
// 16 bytes from global to shared memory: a `cp.async` on sm_80 and newer (its wait:
// `copy_wait`), a load and a store before that
__device__ __forceinline__ void copy16(void* dst, const void* src) {
#if defined(LLM_HOST) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800
#ifdef LLM_HOST
  emu_check_aligned(dst, 16, "copy16's shared-memory destination");
  emu_check_aligned(src, 16, "copy16's global source");
#endif
  *(V16*)dst = *(const V16*)src;
#else
  unsigned s;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
#endif
}
// Waits for the calling thread's `copy16`s.
__device__ __forceinline__ void copy_wait() {
#if !(defined(LLM_HOST) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800)
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
// Closes the calling thread's group of `copy16`s since the last one (an empty group counts too).
__device__ __forceinline__ void copy_commit() {
#if !(defined(LLM_HOST) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800)
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until at most N of the calling thread's groups are still in flight.
template <int N>
__device__ __forceinline__ void copy_wait_group() {
#if !(defined(LLM_HOST) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800)
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
// N consecutive cached elements from shared memory as floats (one 2- to 16-byte load)
template <int N>
__device__ __forceinline__ void kv_part(const kt* p, float* f) {
  constexpr int B = N * (int)sizeof(kt);
  if constexpr (B == 2) {
    f[0] = k2f(p[0]);
  } else if constexpr (B == 4) {
    const unsigned u = *(const unsigned*)p;
    unpack_words<LLM_KT, 1>(&u, f);
  } else if constexpr (B == 8) {
    const V8 q = *(const V8*)p;
    unpack_words<LLM_KT, 2>(q.u, f);
  } else {
    const V16 q = *(const V16*)p;
    unpack_words<LLM_KT, 4>(q.u, f);
  }
}
// A warp's copies of the keys and values kb … min(kb + DEC_TILE, k_hi + 1) − 1 into its K
// [DEC_TILE × (HD + KV_VEC)] and V [DEC_TILE × HD] rows; nothing past k_hi.
template <int HD>
__device__ __forceinline__ void dec_copy(const AttnArgs& a, const int* table, int kb, int k_hi, int koff, kt* Ks, kt* Vs) {
  constexpr int chunks = HD / KV_VEC;           // 16-byte pieces of a key (or value) row
  constexpr int N = DEC_TILE * chunks / 32;     // pieces a lane copies, at most
  const int total = min(DEC_TILE, k_hi - kb + 1) * chunks, kvd = a.nkv * HD, lane = threadIdx.x & 31;
  // the cache slots first, all the block table's loads at once and unconditional (a lane past the
  // tile reads the last key's; the copies are ordered among themselves); a slot fits an int (the
  // cache holds far fewer than 2^31 positions)
  int slot[N];
#pragma unroll
  for (int u = 0; u < N; u++) slot[u] = (int)kv_slot(table, kb + min(lane + 32 * u, total - 1) / chunks);
#pragma unroll
  for (int u = 0; u < N; u++) {
    const int i = lane + 32 * u, j = i / chunks, d = (i % chunks) * KV_VEC;
    if (i < total) {
      const long long at = (long long)slot[u] * kvd + koff + d;
      copy16(Ks + j * (HD + KV_VEC) + d, a.kc + at);
      copy16(Vs + j * HD + d, a.vc + at);
    }
  }
}

template <int HD, class Wait>
__device__ __forceinline__ void attention_decode_body(const AttnArgs& a, const Blk b, const Wait wait) {
  LLM_DYN_SHARED(smem);
  wait();
  const int tile = b.x, kvh = b.y, split = b.z;
  if (tile >= a.n_tiles) return;
  const int seq = a.tiles[4 * tile], t0 = a.tiles[4 * tile + 1];  // one token
  constexpr int C = HD / 32;         // output elements a lane holds: C·lane …
  constexpr int KS = HD + KV_VEC;    // a key's row in shared memory: one 16-byte piece of padding
  constexpr int REGION = DEC_TILE * (KS + HD);  // a warp's shared memory, in cached elements
  // what reuses it: P over the key rows, then the warp's partials over the whole region
  static_assert(DEC_TILE * DEC_PS * 4 <= DEC_TILE * KS * (int)sizeof(kt), "P fits in the key rows");
  static_assert((ATT_ROWS * HD + 2 * ATT_ROWS) * 4 <= REGION * (int)sizeof(kt), "the partials fit in a warp's region");
  const int group = a.nh / a.nkv, rows = group;
  // the position, the block table and the queries' first pieces (two a thread: all of them with
  // eight warps) load together, and the first tile's copies go out with the queries
  const int kmax = a.pos[t0];
  const int* table = a.tables + a.blk_off[seq];
  const int nq = rows * HD / 4;  // the queries' 16-byte pieces
  const F4* qsrc = (const F4*)(a.qkv + (long long)t0 * (a.nh + 2 * a.nkv) * HD + kvh * group * HD);
  const int tid = threadIdx.x, nt = blockDim.x;
  F4 q2[2] = {};
#pragma unroll
  for (int u = 0; u < 2; u++)
    if (tid + u * nt < nq) q2[u] = qsrc[tid + u * nt];
  const int k_lo = split * a.split_len;
  if (k_lo > kmax) return;  // no key of this split is seen: no partials, no ticket
  const int k_hi = min(k_lo + a.split_len - 1, kmax);
  const int lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
  float* Qs = smem;                                             // [ATT_ROWS × HD]
  kt* Ks = (kt*)(Qs + ATT_ROWS * HD) + warp * REGION;           // this warp's keys [DEC_TILE × KS]
  kt* Vs = Ks + DEC_TILE * KS;                                  // ... and values [DEC_TILE × HD]
  float* P = (float*)Ks;  // [DEC_TILE × DEC_PS]: p of key × row, over the keys once scored
  if (k_lo + DEC_TILE * warp <= k_hi) dec_copy<HD>(a, table, k_lo + DEC_TILE * warp, k_hi, kvh * HD, Ks, Vs);
#pragma unroll
  for (int u = 0; u < 2; u++)
    if (tid + u * nt < nq) ((F4*)Qs)[tid + u * nt] = q2[u];
  for (int i = tid + 2 * nt; i < nq; i += nt) ((F4*)Qs)[i] = qsrc[i];  // fewer warps
  __syncthreads();
  float m[ATT_ROWS], l[ATT_ROWS], acc[ATT_ROWS][C];
#pragma unroll
  for (int j = 0; j < ATT_ROWS; j++) {
    m[j] = -LLM_INF;
    l[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < C; c++) acc[j][c] = 0.0f;
  }
  for (int kb = k_lo + DEC_TILE * warp; kb <= k_hi; kb += DEC_TILE * nw) {
    const int nk = min(DEC_TILE, k_hi - kb + 1);
    copy_wait();
    __syncwarp();
    // lane = key: its scores against every row (−∞ past the split's last key)
    float s[ATT_ROWS];
#pragma unroll
    for (int j = 0; j < ATT_ROWS; j++) s[j] = 0.0f;
    if (lane < nk) {
      const kt* k = Ks + lane * KS;
#pragma unroll
      for (int d = 0; d < HD; d += KV_VEC) {
        float kf[KV_VEC];
        kv_part<KV_VEC>(k + d, kf);
#pragma unroll
        for (int j = 0; j < ATT_ROWS; j++) {
          if (j >= rows) break;  // uniform
#pragma unroll
          for (int e = 0; e < KV_VEC; e += 4) {
            const F4 q = *(const F4*)(Qs + j * HD + d + e);
            s[j] += q.v[0] * kf[e] + q.v[1] * kf[e + 1] + q.v[2] * kf[e + 2] + q.v[3] * kf[e + 3];
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < ATT_ROWS; j++) s[j] = lane < nk ? s[j] * a.scale : -LLM_INF;
    __syncwarp();  // every lane's key read: the key rows now hold P
    // per row: the running max and sum, rescaled (online softmax); lane 0 always has a key
#pragma unroll
    for (int j = 0; j < ATT_ROWS; j++) {
      if (j >= rows) break;  // uniform
      float mx = s[j];
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, o));
      const float new_m = fmaxf(m[j], mx);
      const float p = expf(s[j] - new_m), corr = expf(m[j] - new_m);  // corr 0 while m was −∞
      float ps = p;
      for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(FULL_MASK, ps, o);
      l[j] = l[j] * corr + ps;
#pragma unroll
      for (int c = 0; c < C; c++) acc[j][c] *= corr;
      m[j] = new_m;
      P[lane * DEC_PS + j] = p;
    }
    __syncwarp();
    // lane = output elements C·lane …: each value element read once for all the rows, the
    // rows' p four at a time
#pragma unroll 4
    for (int kk = 0; kk < nk; kk++) {
      float v[C];
      kv_part<C>(Vs + kk * HD + C * lane, v);
#pragma unroll
      for (int j = 0; j < ATT_ROWS; j += 4) {
        if (j >= rows) break;  // uniform
        const F4 p4 = *(const F4*)(P + kk * DEC_PS + j);
#pragma unroll
        for (int e = 0; e < 4; e++)
#pragma unroll
          for (int c = 0; c < C; c++) acc[j + e][c] += p4.v[e] * v[c];
      }
    }
    __syncwarp();  // the tile is read: the next copies may overwrite it
    if (kb + DEC_TILE * nw <= k_hi) dec_copy<HD>(a, table, kb + DEC_TILE * nw, k_hi, kvh * HD, Ks, Vs);
  }
  // the warp's partials into its own shared memory: Σ exp(s − m)·v [rows × HD], then m and l
  float* wacc = (float*)Ks;
  float* wml = wacc + ATT_ROWS * HD;
#pragma unroll
  for (int j = 0; j < ATT_ROWS; j++) {
    if (j >= rows) break;
#pragma unroll
    for (int c = 0; c < C; c++) wacc[j * HD + C * lane + c] = acc[j][c];
    if (lane == 0) {
      wml[2 * j] = m[j];
      wml[2 * j + 1] = l[j];
    }
  }
  __syncthreads();
  // the warps merged in warp order: the block's output (one split), or its split's partials
  const float* acc0 = (const float*)(Qs + ATT_ROWS * HD);  // warp 0's partials
  constexpr int RF = REGION * (int)sizeof(kt) / 4;          // a warp's region in floats
  const long long base = ((long long)(tile * a.nkv + kvh) * a.max_splits + split) * a.row_stride;
  for (int i = tid; i < rows * HD; i += nt) {
    const int r = i / HD, d = i % HD;
    float mx = -LLM_INF;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, acc0[w * RF + ATT_ROWS * HD + 2 * r]);
    float num = 0.0f, den = 0.0f;
    for (int w = 0; w < nw; w++) {
      const float* wp = acc0 + w * RF;
      const float mw = wp[ATT_ROWS * HD + 2 * r];
      if (mw == -LLM_INF) continue;  // a warp with no key of this split
      const float f = expf(mw - mx);
      num += wp[i] * f;
      den += wp[ATT_ROWS * HD + 2 * r + 1] * f;
    }
    if (a.max_splits == 1) {
      a.att[(long long)t0 * a.nh * HD + (kvh * group + r) * HD + d] = f2w(num / den);
    } else {
      a.part_acc[(base + r) * HD + d] = num;
      if (d == 0) {
        a.part_ml[(base + r) * 2] = mx;
        a.part_ml[(base + r) * 2 + 1] = den;
      }
    }
  }
  if (a.max_splits == 1) return;
  merge_splits<HD>(a, tile, kvh, t0, 1, rows, group, kmax);
}
#if LLM_FOR_HD(32)
LLM_KERNEL(attention_dec_hd32, AttnArgs) { attention_decode_body<32>(a, launch_block(), Pdl{}); }
#endif
#if LLM_FOR_HD(64)
LLM_KERNEL(attention_dec_hd64, AttnArgs) { attention_decode_body<64>(a, launch_block(), Pdl{}); }
#endif
#if LLM_FOR_HD(128)
LLM_KERNEL(attention_dec_hd128, AttnArgs) { attention_decode_body<128>(a, launch_block(), Pdl{}); }
#endif

// ── SwiGLU: act[t, j] = silu(gate[t, j]) · up[t, j]; gu rows interleave them: [g0 u0 g1 u1 …] ──
struct SwigluArgs {
  const float* gu;  // [n × 2·ffn]
  wt* act;          // [n × ffn]
  int n;
  int ffn;
};
LLM_KERNEL(swiglu, SwigluArgs) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  if (t >= a.n) return;
  const float* gu = a.gu + (long long)t * 2 * a.ffn;
  wt* out = a.act + (long long)t * a.ffn;
  for (int j = threadIdx.x; j < a.ffn; j += blockDim.x) {
    out[j] = f2w(silu_mul(gu[2 * j], gu[2 * j + 1]));
  }
}

// ── per row of logits: log-softmax at the target and the argmax (first on ties) ──
// A NaN logit ranks above every number (the first NaN wins), so a row holding one reports
// `am = -1 - (its index)`: a NaN never wins a plain comparison, and greedy decoding would silently
// step around it (the host turns the mark into the request's error).
// The terms exp(x − max) are f32 (within 2 ulp each: the log-softmax is off by under 1e-6 nats)
// and summed in f64 (an f64 exp per vocabulary entry would run on the slow f64 units).
struct ReduceArgs {
  const float* logits;  // [n × vocab]
  const int* target;    // [n] (-1: none) or null
  double* lp;           // [n]
  int* am;              // [n]
  int vocab;
  int n;
};
LLM_KERNEL(logits_reduce, ReduceArgs) {
  pdl_wait();
  pdl_trigger();
  __shared__ float sv[1024];
  __shared__ int si[1024];
  __shared__ double sd[1024];
  const int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
  if (r >= a.n) return;
  const float* row = a.logits + (long long)r * a.vocab;
  float best = -LLM_INF;
  int bi = 0x7fffffff;
  for (int i0 = tid; i0 < a.vocab; i0 += LD_BATCH * nt) {  // in index order, LD_BATCH loads at once
    float x[LD_BATCH] = {};
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++)
      if (i0 + u * nt < a.vocab) x[u] = row[i0 + u * nt];
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++) {
      const int i = i0 + u * nt;
      const float v = x[u];
      if (i < a.vocab && (bi == 0x7fffffff || (v != v && best == best) || v > best)) { best = v; bi = i; }
    }
  }
  sv[tid] = best;
  si[tid] = bi;
  __syncthreads();
  for (int o = nt / 2; o > 0; o >>= 1) {
    if (tid < o) {
      const float v1 = sv[tid], v2 = sv[tid + o];
      const int i2 = si[tid + o];
      const bool n1 = v1 != v1, n2 = v2 != v2;
      if (n1 == n2 ? (v2 > v1 || ((v2 == v1 || n2) && i2 < si[tid])) : n2) { sv[tid] = v2; si[tid] = i2; }
    }
    __syncthreads();
  }
  const float mx = sv[0];
  const int arg = mx != mx ? -1 - si[0] : si[0];
  const int target = a.target ? a.target[r] : -1;  // uniform across the block
  if (target < 0) {  // argmax only (a generated token): no log-softmax to compute
    if (tid == 0) {
      a.am[r] = arg;
      a.lp[r] = 0.0;
    }
    return;
  }
  double s = 0.0;
  for (int i0 = tid; i0 < a.vocab; i0 += LD_BATCH * nt) {
    float x[LD_BATCH] = {};
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++)
      if (i0 + u * nt < a.vocab) x[u] = row[i0 + u * nt];
#pragma unroll
    for (int u = 0; u < LD_BATCH; u++)
      if (i0 + u * nt < a.vocab) s += (double)expf(x[u] - mx);
  }
  sd[tid] = s;
  __syncthreads();
  for (int o = nt / 2; o > 0; o >>= 1) {
    if (tid < o) sd[tid] += sd[tid + o];
    __syncthreads();
  }
  if (tid == 0) {
    a.am[r] = arg;
    a.lp[r] = (double)(row[target] - mx) - log(sd[0]);
  }
}

// ── decode matrix products: y[r, j] (+)= Σ_i in(r)[i] · w[j, i] for a handful of rows r ──
// A decode step's products have a few rows, so they are bound by reading the weights once: each
// of a block's W warps streams R weight rows in 16-byte loads (U loads a row in flight) and
// applies them to up to MV_M input rows. The input is the rows of `a` (MV_PLAIN), or RMSNorm of the residual rows
// of `x` (row rows[r], or r) times `norm_w` made on the fly (MV_NORM) and rounded to the storage
// type as `rms_norm` stores it. The output (`out`): MV_F32 f32 rows, set or accumulated; MV_GLU
// the weight rows are (gate, up) pairs, one pair a warp, and the output is SwiGLU's silu(gate)·up
// in the storage type, as `swiglu` writes it; MV_QKV the q/k/v product of token rows, finished as
// `rope_store` does (bias, rotation of each (2i, 2i + 1) pair — one pair a warp — q into `y`,
// k and v into the KV cache). So a decode layer launches neither RMSNorm, RoPE nor SwiGLU.
// Batch invariance: lane l sums elements l·MV_VEC + 32·MV_VEC·s in s order, the warp reduces in a
// fixed tree, and a row's norm scale is one warp's sum in a fixed order: an output depends on its
// own row only, never on m, on which block ran it, or on W, R and U. So the kernels below, one per
// (W, R, U), give the same bits; the engine times them on the model's products when it loads and
// runs each product on the fastest (mod.rs).
#define MV_M 8       // input rows per block (grid.x covers more)
#define MV_PLAIN 0
#define MV_NORM 1
#define MV_F32 0
#define MV_GLU 1
#define MV_QKV 2
#define MV_VEC (16 / (int)sizeof(wt))  // weights per 16-byte load


__device__ __forceinline__ void unpack_w(const V16 q, float* f) { unpack16<LLM_WT>(q, f); }

// MV_VEC consecutive f32 values (16-byte aligned)
__device__ __forceinline__ void load_f(const float* p, float* f) {
#pragma unroll
  for (int h = 0; h < MV_VEC / 4; h++) {
    const F4 q = *(const F4*)(p + 4 * h);
#pragma unroll
    for (int e = 0; e < 4; e++) f[4 * h + e] = q.v[e];
  }
}

struct MatvecArgs {
  const wt* a;           // MV_PLAIN: [m × k]
  const float* x;        // MV_NORM: [* × k] residual rows
  const float* norm_w;   // MV_NORM: [k]
  const int* rows;       // MV_NORM: [m] rows of x, or null (row r)
  const wt* w;           // [n × k]; MV_GLU: rows 2j and 2j + 1 are feature j's gate and up
  void* y;               // [m × n] f32 (MV_QKV: only q is written); MV_GLU [m × n/2] wt
  // MV_QKV: as in RopeArgs (input row r is packed token r)
  const float* bias;     // [n] or null
  const float* inv_freq; // [hd / 2]
  const int* pos;
  const int* seq_of;
  const int* blk_off;
  const int* tables;
  kt* kc;
  kt* vc;
  int nh;
  int nkv;
  int hd;
  int m;
  int n;                 // even with MV_GLU and MV_QKV
  int k;                 // a multiple of MV_VEC
  int mode;
  int out;
  int accumulate;
  float eps;
};
// W warps a block (grid.y covers n / (W·R) of them), R weight rows a warp (2 with MV_GLU and
// MV_QKV: a gate/up or rotated pair), U loads of a weight row in flight per lane; P = 1: the next
// U loads go out before the arithmetic on these (twice the registers, no gap between rounds);
// S = 1: the block first writes its input rows into dynamic shared memory (min(m, MV_M) × k
// elements), and every weight row reads them there: with MV_NORM normalised and rounded to the
// storage type (a 16-byte load a row per MV_VEC weights instead of two loads of x, two of norm_w
// and the rounding each time: about 40% of the inner loop's instructions, by count), with
// MV_PLAIN copied (the input's loads no longer queue with the weights' in the L1). Same values,
// so the same bits. Q > 0 (with S = 1; U unused): each lane copies its own 16-byte pieces of
// its weight rows with `cp.async` into a ring of Q slots of its own in shared memory (after the
// input rows), Q pieces of each row ahead of the one it multiplies, across its row groups: more
// bytes in flight than registers hold, none held in registers while they travel. A lane reads
// only what it copied, so no warp waits for another; the pieces and sums are the same, in the
// same order, so the same bits.
template <int W, int R, int U, int P, int S, int Q, class Wait>
__device__ __forceinline__ void matvec_body(const MatvecArgs& a, const Blk b, const Wait wait) {
  static_assert(Q == 0 || S == 1, "the ring follows the staged input rows");
  __shared__ float s_scale[MV_M];
  __shared__ int s_src[MV_M];
  LLM_DYN_SHARED(dyn);
  wt* xin = (wt*)dyn;  // S: [m × k] the block's input rows
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r0 = b.x * MV_M, m = min(MV_M, a.m - r0);
  if (m <= 0) return;  // uniform across the block
  // this warp's row groups: j0, j0 + jstep, … (one, unless the grid is smaller than the rows)
  int j0 = (b.y * W + warp) * R;
  const int jstep = b.gy * W * R;
  const wt* wrow[R];
#pragma unroll
  for (int rr = 0; rr < R; rr++) wrow[rr] = a.w + (long long)min(j0 + rr, a.n - 1) * a.k;
  const int step = 32 * MV_VEC, base0 = lane * MV_VEC;
  // Q: this lane's ring, slot d row rr at ring[(d·R + rr)·32] (consecutive lanes, consecutive
  // pieces: no bank conflicts); item t is piece t % np of the rows of this warp's row group t / np
  const int np = (a.k + step - 1) / step;
  const int items = j0 < a.n ? (a.n - j0 + jstep - 1) / jstep * np : 0;
  V16* ring = (V16*)((char*)dyn + (m * a.k * (int)sizeof(wt) + 15) / 16 * 16) + warp * Q * R * 32 + lane;
  const auto issue = [&](const int t) {
    if (t < items) {
      const int i = base0 + t % np * step, j = j0 + t / np * jstep;
#pragma unroll
      for (int rr = 0; rr < R; rr++)
        if (i < a.k) copy16(ring + (t % Q * R + rr) * 32, a.w + (long long)min(j + rr, a.n - 1) * a.k + i);
    }
    copy_commit();
  };
  // the first loads (or copies) of this warp's weight rows go out before the previous kernel
  // has finished
  if constexpr (Q > 0) {
#pragma unroll 1
    for (int t = 0; t < Q; t++) issue(t);
  }
  V16 wq[U][R] = {};
  if (Q == 0 && j0 < a.n) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int rr = 0; rr < R; rr++)
        if (base0 + u * step < a.k) wq[u][rr] = *(const V16*)(wrow[rr] + base0 + u * step);
  }
  wait();
  for (int rw = warp; rw < m; rw += W) {  // one warp per input row: its source row and RMSNorm scale
    const int src = a.mode == MV_NORM && a.rows ? a.rows[r0 + rw] : r0 + rw;
    float ss = 0.0f;
    if (a.mode == MV_NORM) {
      const float* xr = a.x + (long long)src * a.k;
      // in order, B loads at once (B = 1: as the compiler unrolls it; the staged shapes, lighter
      // on registers, take LD_BATCH)
      constexpr int B = S ? LD_BATCH : 1;
      for (int i0 = lane * 4; i0 < a.k; i0 += 128 * B) {
        F4 q[B] = {};
#pragma unroll
        for (int u = 0; u < B; u++)
          if (i0 + 128 * u < a.k) q[u] = *(const F4*)(xr + i0 + 128 * u);
#pragma unroll
        for (int u = 0; u < B; u++)
          if (i0 + 128 * u < a.k)
#pragma unroll
            for (int e = 0; e < 4; e++) ss += q[u].v[e] * q[u].v[e];
      }
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(FULL_MASK, ss, o);
    }
    if (lane == 0) {
      s_src[rw] = src;
      s_scale[rw] = 1.0f / sqrtf(ss / (float)a.k + a.eps);
    }
  }
  __syncthreads();
  if (S && a.mode == MV_PLAIN) {  // the block's input rows, as they are (LD_BATCH loads at once)
    const V16* src = (const V16*)(a.a + (long long)r0 * a.k);
    const int n16 = m * a.k / MV_VEC;
    for (int i0 = threadIdx.x; i0 < n16; i0 += LD_BATCH * blockDim.x) {
      V16 q[LD_BATCH];
#pragma unroll
      for (int u = 0; u < LD_BATCH; u++)
        if (i0 + u * (int)blockDim.x < n16) q[u] = src[i0 + u * blockDim.x];
#pragma unroll
      for (int u = 0; u < LD_BATCH; u++)
        if (i0 + u * (int)blockDim.x < n16) ((V16*)xin)[i0 + u * blockDim.x] = q[u];
    }
    __syncthreads();
  }
  if (S && a.mode == MV_NORM) {
    for (int r = 0; r < m; r++) {
      const float* xr = a.x + (long long)s_src[r] * a.k;
      for (int i0 = 4 * threadIdx.x; i0 < a.k; i0 += 16 * blockDim.x) {  // 4 × 2 loads at once
        F4 xs[4] = {}, nw[4] = {};
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const int i = i0 + 4 * u * blockDim.x;
          if (i < a.k) {
            xs[u] = *(const F4*)(xr + i);
            nw[u] = *(const F4*)(a.norm_w + i);
          }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
          const int i = i0 + 4 * u * blockDim.x;
          if (i < a.k)
#pragma unroll
            for (int e = 0; e < 4; e++) xin[r * a.k + i + e] = f2w(xs[u].v[e] * s_scale[r] * nw[u].v[e]);
        }
      }
    }
    __syncthreads();
  }
  // this lane's wf · input for the MV_VEC weights at i of each of its rows, into acc
  const auto madd = [&](float (&acc)[R][MV_M], const float (&wf)[R][MV_VEC], const int i) {
#pragma unroll
    for (int r = 0; r < MV_M; r++) {
      if (r >= m) break;
      float in[MV_VEC];
      if (S) {
        unpack_w(*(const V16*)(xin + r * a.k + i), in);
      } else if (a.mode == MV_PLAIN) {
        unpack_w(*(const V16*)(a.a + (long long)(r0 + r) * a.k + i), in);
      } else {
        float xs[MV_VEC], nw[MV_VEC];
        load_f(a.x + (long long)s_src[r] * a.k + i, xs);
        load_f(a.norm_w + i, nw);
#pragma unroll
        for (int e = 0; e < MV_VEC; e++) in[e] = w2f(f2w(xs[e] * s_scale[r] * nw[e]));
      }
#pragma unroll
      for (int rr = 0; rr < R; rr++)
#pragma unroll
        for (int e = 0; e < MV_VEC; e++) acc[rr][r] += wf[rr][e] * in[e];
    }
  };
  // the row group at j0 done: each input row's sums reduced across the warp, and written
  const auto finish = [&](const int jg, float (&acc)[R][MV_M]) {
#pragma unroll
    for (int r = 0; r < MV_M; r++) {
      if (r >= m) break;
      float v[R];
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        v[rr] = acc[rr][r];
        for (int o = 16; o > 0; o >>= 1) v[rr] += __shfl_xor_sync(FULL_MASK, v[rr], o);
      }
      if (lane != 0) continue;
      if constexpr (R == 2) {
        if (a.out == MV_GLU) {
          ((wt*)a.y)[(long long)(r0 + r) * (a.n / 2) + jg / 2] = f2w(silu_mul(v[0], v[1]));
          continue;
        }
        if (a.out == MV_QKV) {
          const int t = r0 + r, qd = a.nh * a.hd, kvd = a.nkv * a.hd;
          float x0 = v[0], x1 = v[1];
          if (a.bias) {
            x0 += a.bias[jg];
            x1 += a.bias[jg + 1];
          }
          const int p = a.pos[t];
          if (jg < qd + kvd) rope_pair(x0, x1, p, a.inv_freq[(jg % a.hd) / 2]);  // a q or k pair
          if (jg < qd) {
            float* q = (float*)a.y + (long long)t * a.n + jg;
            q[0] = x0;
            q[1] = x1;
          } else {
            const long long slot = kv_slot(a.tables + a.blk_off[a.seq_of[t]], p);
            kt* dst = jg < qd + kvd ? a.kc + slot * kvd + (jg - qd) : a.vc + slot * kvd + (jg - qd - kvd);
            dst[0] = f2k(x0);
            dst[1] = f2k(x1);
          }
          continue;
        }
      }
#pragma unroll
      for (int rr = 0; rr < R; rr++) {
        if (jg + rr >= a.n) break;
        float* out = (float*)a.y + (long long)(r0 + r) * a.n + jg + rr;
        *out = a.accumulate ? *out + v[rr] : v[rr];
      }
    }
  };
  if constexpr (Q > 0) {
    float acc[R][MV_M] = {};
#pragma unroll 1
    for (int t = 0; t < items; t++) {
      copy_wait_group<Q - 1>();  // item t is in (Q groups were closed after it, less one)
      const int i = base0 + t % np * step;
      if (i < a.k) {
        float wf[R][MV_VEC];
#pragma unroll
        for (int rr = 0; rr < R; rr++) unpack_w(ring[(t % Q * R + rr) * 32], wf[rr]);
        madd(acc, wf, i);
      }
      issue(t + Q);  // into the slot just read
      if (t % np == np - 1) {
        finish(j0 + t / np * jstep, acc);
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
          for (int r = 0; r < MV_M; r++) acc[rr][r] = 0.0f;
      }
    }
    copy_wait();
    return;
  }
  for (; j0 < a.n; j0 += jstep) {
    float acc[R][MV_M];
#pragma unroll
    for (int rr = 0; rr < R; rr++)
#pragma unroll
      for (int r = 0; r < MV_M; r++) acc[rr][r] = 0.0f;
    for (int base = base0; base < a.k; base += U * step) {
      V16 nq[P ? U : 1][R] = {};
      if constexpr (P != 0) {
        const int nb = base + U * step;
        if (nb < a.k) {
#pragma unroll
          for (int u = 0; u < U; u++)
#pragma unroll
            for (int rr = 0; rr < R; rr++)
              if (nb + u * step < a.k) nq[u][rr] = *(const V16*)(wrow[rr] + nb + u * step);
        } else if (j0 + jstep < a.n) {  // the last round: the next row group's first loads
#pragma unroll
          for (int u = 0; u < U; u++)
#pragma unroll
            for (int rr = 0; rr < R; rr++)
              if (base0 + u * step < a.k) nq[u][rr] = *(const V16*)(a.w + (long long)min(j0 + jstep + rr, a.n - 1) * a.k + base0 + u * step);
        }
      } else if (base != base0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
          for (int rr = 0; rr < R; rr++)
            if (base + u * step < a.k) wq[u][rr] = *(const V16*)(wrow[rr] + base + u * step);
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int i = base + u * step;
        if (i >= a.k) break;
        float wf[R][MV_VEC];
#pragma unroll
        for (int rr = 0; rr < R; rr++) unpack_w(wq[u][rr], wf[rr]);
        madd(acc, wf, i);
      }
      if constexpr (P != 0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
          for (int rr = 0; rr < R; rr++) wq[u][rr] = nq[u][rr];
      }
    }
    finish(j0, acc);
    if (j0 + jstep < a.n) {  // on to the next row group, its first loads already out if pipelined
#pragma unroll
      for (int rr = 0; rr < R; rr++) wrow[rr] = a.w + (long long)min(j0 + jstep + rr, a.n - 1) * a.k;
      if constexpr (P == 0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
          for (int rr = 0; rr < R; rr++)
            if (base0 + u * step < a.k) wq[u][rr] = *(const V16*)(wrow[rr] + base0 + u * step);
      }
    }
  }
}

// The shapes' kernels (src/engine/cuda/args.rs, MV_SHAPES, mirrors this list; a shape with a block
// cap runs its uncapped twin's kernel, as the cap only sizes the grid).
LLM_KERNEL(matvec, MatvecArgs) { matvec_body<8, 2, 4, 0, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w8r2u8, MatvecArgs) { matvec_body<8, 2, 8, 0, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w8r1u8, MatvecArgs) { matvec_body<8, 1, 8, 0, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r2u4p, MatvecArgs) { matvec_body<4, 2, 4, 1, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r2u8, MatvecArgs) { matvec_body<4, 2, 8, 0, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r1u8, MatvecArgs) { matvec_body<4, 1, 8, 0, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r1u4p, MatvecArgs) { matvec_body<4, 1, 4, 1, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w8r1u4p, MatvecArgs) { matvec_body<8, 1, 4, 1, 0, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w8r2u4_s, MatvecArgs) { matvec_body<8, 2, 4, 0, 1, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r2u4p_s, MatvecArgs) { matvec_body<4, 2, 4, 1, 1, 0>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w8r2q8_s, MatvecArgs) { matvec_body<8, 2, 1, 0, 1, 8>(a, launch_block(), Pdl{}); }
LLM_KERNEL(matvec_w4r2q16_s, MatvecArgs) { matvec_body<4, 2, 1, 0, 1, 16>(a, launch_block(), Pdl{}); }

// ── a decode step's layers and LM head in one launch ──
// Launch by launch, each of a decode step's 4L + 1 products and attentions ends with its grid
// draining and starts with its blocks' first loads in flight before any arithmetic. `decode_step`
// runs them as phases of one launch of as many blocks as the GPU holds at once (a cooperative
// launch): block i takes a phase's virtual blocks i, i + grid, … and runs the same bodies as the
// kernels above (so the same bits), and a grid barrier stands where a phase first reads what the
// one before wrote — after a product's first weight loads have gone out. The host writes the
// phases once for each step shape (a table in device memory) and copies each into shared memory
// before a block runs it.
#define PH_ARGS 256     // bytes of a phase's argument struct, at most
#define PH_MATVEC 0     // a product: matvec_body<8, 2, 4, 0, 1, 0> (eight warps, staged input)
#define PH_ATTENTION 1  // the decode attention, eight warps
#define PH_MATVEC_RING 2  // a product: matvec_body<8, 2, 1, 0, 1, 8> (weights through a ring)
struct alignas(16) Phase {
  int kind;
  unsigned gx, gy, gz;           // its virtual grid
  unsigned char args[PH_ARGS];   // its MatvecArgs or AttnArgs
};
static_assert(sizeof(MatvecArgs) <= PH_ARGS && sizeof(AttnArgs) <= PH_ARGS, "a phase holds its arguments");
static_assert(sizeof(Phase) == 16 + PH_ARGS, "the host's layout of a phase");

struct StepArgs {
  const Phase* phases;  // [count]
  unsigned* bar;        // [2] the grid barrier's arrivals and generation (zero when allocated)
  int count;
};

#ifndef LLM_HOST
// Waits while `*gen` is still `g`; traps (a launch error, not a hang) after about 4 s.
__device__ void grid_spin(volatile unsigned* gen, unsigned g) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  while (*gen == g) {
    asm volatile("nanosleep.u32 32;");
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (t - t0 > 4000000000ull) asm volatile("trap;");
  }
}
#endif

// Every block of the grid arrives before any goes on, and what each wrote before is visible to
// all after. The last to arrive puts the count back to zero and moves the generation on, so the
// barrier needs no reset between launches.
__device__ void grid_sync(unsigned* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* gen = bar + 1;
    const unsigned g = *gen;  // read before arriving: it moves on only once every block has
    __threadfence();
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);
      __threadfence();
      atomicAdd(bar + 1, 1u);
    } else {
      grid_spin(gen, g);
    }
    __threadfence();
  }
  __syncthreads();
}

template <int HD>
__device__ __forceinline__ void decode_step_body(const StepArgs& a) {
  __shared__ Phase s_ph;
  pdl_wait();
  pdl_trigger();
#pragma unroll 1
  for (int p = 0; p < a.count; p++) {
    const unsigned n = a.phases[p].gx * a.phases[p].gy * a.phases[p].gz;
    bool waited = p == 0;  // the launch waited for what came before the step (the embedding)
    const auto wait = [&] {
      if (!waited) grid_sync(a.bar);
      waited = true;
    };
#pragma unroll 1
    for (unsigned v = blockIdx.x; v < n; v += gridDim.x) {
      // the phase into shared memory (the bodies read their arguments there); the body before
      // is done with it
      for (int i = threadIdx.x; i < (int)sizeof(Phase) / 16; i += blockDim.x) ((V16*)&s_ph)[i] = ((const V16*)(a.phases + p))[i];
      __syncthreads();
      const Blk b{v % s_ph.gx, v / s_ph.gx % s_ph.gy, v / (s_ph.gx * s_ph.gy), s_ph.gx, s_ph.gy, s_ph.gz};
      if (s_ph.kind == PH_MATVEC) {
        matvec_body<8, 2, 4, 0, 1, 0>(*(const MatvecArgs*)s_ph.args, b, wait);
      } else if (s_ph.kind == PH_MATVEC_RING) {
        matvec_body<8, 2, 1, 0, 1, 8>(*(const MatvecArgs*)s_ph.args, b, wait);
      } else {
        attention_decode_body<HD>(*(const AttnArgs*)s_ph.args, b, wait);
      }
      __syncthreads();  // the body's shared memory read: the next may write it
    }
    wait();  // a block with no virtual block of this phase
  }
}
#if LLM_FOR_HD(32)
LLM_KERNEL(decode_step_hd32, StepArgs) { decode_step_body<32>(a); }
#endif
#if LLM_FOR_HD(64)
LLM_KERNEL(decode_step_hd64, StepArgs) { decode_step_body<64>(a); }
#endif
#if LLM_FOR_HD(128)
LLM_KERNEL(decode_step_hd128, StepArgs) { decode_step_body<128>(a); }
#endif
