// CPU emulation of the CUDA subset `kernels.cu` uses, so the tests can run the kernels without a
// GPU: `g++ -DLLM_HOST -include emu.h kernels.cu` builds a library whose kernels are plain
// functions, and `emu_launch` runs a grid block by block, each block's threads as fibers on one OS
// thread, switching at __syncthreads and at warp shuffles (a barrier of the warp's 32 lanes), in
// an order shuffled anew at each barrier.
// Blocks run one at a time, in a shuffled order (a GPU promises none), so `__shared__` variables
// are function statics (thread-local, so tests may launch from several threads at once). A
// cooperative launch (`emu_launch_coop`, whose blocks wait for each other at grid barriers) runs
// each block on an OS thread of its own instead, all at once.
#pragma once
#define _GNU_SOURCE 1
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <setjmp.h>
#include <unistd.h>
#include <thread>
#include <ucontext.h>
#include <vector>

#define LLM_HOST 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static thread_local
#define LLM_INF INFINITY
typedef unsigned short u16;

struct EmuDim { unsigned x, y, z; };
static thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;
static thread_local unsigned char* emu_dyn_smem;
#define LLM_DYN_SHARED(name) float* name = (float*)emu_dyn_smem

#define LLM_KERNEL(name, Args)                                                    \
  static void name##_body(const Args a);                                          \
  extern "C" void name(const void* p) { name##_body(*(const Args*)p); }          \
  extern "C" unsigned long name##_args_size() { return sizeof(Args); }            \
  static void name##_body(const Args a)

static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

static inline float bf16_to_f(u16 x) { return __uint_as_float(((unsigned)x) << 16); }
static inline u16 f_to_bf16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}
static inline float f16_to_f(u16 x) { _Float16 h; memcpy(&h, &x, 2); return (float)h; }
static inline u16 f_to_f16(float f) { _Float16 h = (_Float16)f; u16 x; memcpy(&x, &h, 2); return x; }

// ── fibers: started with makecontext/setcontext, switched with _setjmp/_longjmp ──
enum EmuState { EMU_NEW, EMU_RUN, EMU_BLOCK, EMU_WARP, EMU_DONE };
struct EmuFiber { ucontext_t ctx; jmp_buf env; EmuState state; };
static thread_local std::vector<EmuFiber> emu_fibers;
static thread_local char* emu_stacks;  // malloc'd (pages come as fibers touch them)
static thread_local size_t emu_stacks_len;
static thread_local jmp_buf emu_sched;
static thread_local unsigned emu_cur;
static thread_local void (*emu_kernel)(const void*);
static thread_local const void* emu_args;
static thread_local float emu_shfl[32][32];
static const size_t EMU_STACK = 256 * 1024;

static void emu_wait(EmuState s) {
  emu_fibers[emu_cur].state = s;
  if (!_setjmp(emu_fibers[emu_cur].env)) _longjmp(emu_sched, 1);
}
static inline void __syncthreads() { emu_wait(EMU_BLOCK); }
static inline void __syncwarp() { emu_wait(EMU_WARP); }
static inline float emu_exchange(float v, unsigned src) {
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  emu_shfl[warp][lane] = v;
  emu_wait(EMU_WARP);
  const float r = emu_shfl[warp][src % 32];
  emu_wait(EMU_WARP);
  return r;
}
// Blocks of a cooperative launch run at once on OS threads: fences and atomics are real.
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
// An access the GPU would fault on (a misaligned `cp.async`, which on a card leaves the context
// unusable): the test process stops with what it was.
static inline void emu_check_aligned(const void* p, unsigned long n, const char* what) {
  if ((unsigned long)p % n != 0) {
    fprintf(stderr, "emulated GPU: %s at %p is not %lu-byte aligned\n", what, p, n);
    abort();
  }
}
// kernels.cu's vector types (V16, F4, V8) check the address of each copy from or to memory.
#define LLM_VEC_CHECKS(T, N)                                             \
  T() = default;                                                         \
  T(const T& o) {                                                        \
    emu_check_aligned(&o, N, "a " #T " load");                           \
    memcpy((void*)this, (const void*)&o, N);                             \
  }                                                                      \
  T& operator=(const T& o) {                                             \
    emu_check_aligned(this, N, "a " #T " store");                        \
    emu_check_aligned(&o, N, "a " #T " load");                           \
    memcpy((void*)this, (const void*)&o, N);                             \
    return *this;                                                        \
  }
// A grid barrier's wait (kernels.cu's `grid_spin`): the other blocks' OS threads run meanwhile.
// Aborts after a minute (a barrier that is never reached), so a test fails rather than hangs.
static void grid_spin(volatile unsigned* gen, unsigned g) {
  for (unsigned long spins = 0; __atomic_load_n(gen, __ATOMIC_ACQUIRE) == g; spins++) {
    if (spins > 60ul * 1000 * 1000) {
      fprintf(stderr, "emulated GPU: a grid barrier waited for a minute\n");
      abort();
    }
    if (spins % 64 == 63) usleep(1);
    else sched_yield();
  }
}
static inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_exchange(v, (threadIdx.x % 32) ^ (unsigned)o); }
static inline float __shfl_sync(unsigned, float v, int src) { return emu_exchange(v, (unsigned)src); }

// Shuffles `v` with the xorshift state `rng` (Fisher-Yates).
static void emu_shuffle(std::vector<unsigned>& v, unsigned long long& rng) {
  for (size_t i = v.size(); i > 1; i--) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    const size_t j = (size_t)((rng * 0x2545f4914f6cdd1dull) % i);
    const unsigned t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
}

static void emu_entry() {
  emu_kernel(emu_args);
  emu_fibers[emu_cur].state = EMU_DONE;
  _longjmp(emu_sched, 1);
}

// Sets up the calling OS thread to run blocks of `kernel` (its fibers, stacks and dynamic shared
// memory); 0, or 1 if the block has more than 1024 threads or is not whole warps.
static int emu_setup(void (*kernel)(const void*), const void* args, unsigned gx, unsigned gy, unsigned gz, unsigned block, std::vector<unsigned char>& smem) {
  if (block == 0 || block > 1024 || block % 32 != 0) return 1;
  emu_dyn_smem = smem.data();
  emu_kernel = kernel;
  emu_args = args;
  emu_fibers.assign(block, EmuFiber{});
  if (emu_stacks_len < (size_t)block * EMU_STACK) {
    free(emu_stacks);
    emu_stacks_len = (size_t)block * EMU_STACK;
    emu_stacks = (char*)malloc(emu_stacks_len);
    if (!emu_stacks) {
      emu_stacks_len = 0;
      return 1;
    }
  }
  gridDim = EmuDim{gx, gy, gz};
  blockDim = EmuDim{block, 1, 1};
  return 0;
}

// Runs block `b` of the launch set up on this thread to its end; 0, or 1 if it deadlocked
// (threads stuck at different barriers).
static int emu_block(unsigned b, unsigned long long& rng) {
  const unsigned block = blockDim.x, gx = gridDim.x, gy = gridDim.y;
  const unsigned x = b % gx, y = (b / gx) % gy, z = b / (gx * gy);
  blockIdx = EmuDim{x, y, z};
  for (unsigned t = 0; t < block; t++) {
    EmuFiber& f = emu_fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = &emu_stacks[(size_t)t * EMU_STACK];
    f.ctx.uc_stack.ss_size = EMU_STACK;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, emu_entry, 0);
    f.state = EMU_NEW;
  }
  std::vector<unsigned> threads(block);
  for (unsigned t = 0; t < block; t++) threads[t] = t;
  for (;;) {
    // between barriers, threads run in a new shuffled order each round: a read of another
    // thread's write that lacks a barrier sees the old value in some round, as on a GPU
    emu_shuffle(threads, rng);
    bool ran = false;
    for (const unsigned t : threads) {
      const EmuState st = emu_fibers[t].state;
      if (st != EMU_RUN && st != EMU_NEW) continue;
      emu_cur = t;
      threadIdx = EmuDim{t, 0, 0};
      emu_fibers[t].state = EMU_RUN;
      if (!_setjmp(emu_sched)) {
        if (st == EMU_NEW) setcontext(&emu_fibers[t].ctx);
        else _longjmp(emu_fibers[t].env, 1);
      }
      ran = true;
    }
    unsigned done = 0, at_block = 0;
    for (unsigned t = 0; t < block; t++) {
      done += emu_fibers[t].state == EMU_DONE;
      at_block += emu_fibers[t].state == EMU_BLOCK;
    }
    if (done == block) return 0;
    bool released = false;
    for (unsigned w = 0; w < block / 32; w++) {
      unsigned at_warp = 0;
      for (unsigned l = 0; l < 32; l++) at_warp += emu_fibers[w * 32 + l].state == EMU_WARP;
      if (at_warp == 32) {
        for (unsigned l = 0; l < 32; l++) emu_fibers[w * 32 + l].state = EMU_RUN;
        released = true;
      }
    }
    if (!released && at_block > 0 && at_block + done == block) {
      if (done > 0) return 1;  // some threads left while others wait at __syncthreads
      for (unsigned t = 0; t < block; t++) emu_fibers[t].state = EMU_RUN;
      released = true;
    }
    if (!released && !ran) return 1;
  }
}

static thread_local unsigned long long emu_launches = 0;

// A launch's dynamic shared memory: `shared` bytes (zeros), then a guard a block must not write
// (on a GPU, an error that leaves the context unusable).
#define EMU_GUARD 64
static std::vector<unsigned char> emu_smem(unsigned shared) {
  std::vector<unsigned char> m(shared + EMU_GUARD, 0);
  memset(m.data() + shared, 0xa5, EMU_GUARD);
  return m;
}
static bool emu_smem_intact(const std::vector<unsigned char>& m, unsigned shared) {
  for (unsigned i = 0; i < EMU_GUARD; i++)
    if (m[shared + i] != 0xa5) return false;
  return true;
}

// Runs `kernel` over the grid, block after block in a shuffled order (a GPU promises none; the
// same order for the same launch count); 0, 1 if a block deadlocked or has a bad size, or 2 if a
// block wrote past its dynamic shared memory.
extern "C" int emu_launch(void (*kernel)(const void*), const void* args, unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned shared) {
  std::vector<unsigned char> smem = emu_smem(shared);
  if (emu_setup(kernel, args, gx, gy, gz, block, smem)) return 1;
  unsigned long long rng = 0x9e3779b97f4a7c15ull * ++emu_launches;
  std::vector<unsigned> order((size_t)gx * gy * gz);
  for (unsigned i = 0; i < order.size(); i++) order[i] = i;
  emu_shuffle(order, rng);
  for (const unsigned b : order) {
    if (emu_block(b, rng)) return 1;
    if (!emu_smem_intact(smem, shared)) return 2;
  }
  return 0;
}

// Runs `kernel` over the grid with every block at once, each on an OS thread of its own (their
// fibers, shared memory and thread-local state apart), as a cooperative launch runs them; returns
// as `emu_launch` does.
extern "C" int emu_launch_coop(void (*kernel)(const void*), const void* args, unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned shared) {
  const unsigned n = gx * gy * gz;
  const unsigned long long seed = 0x9e3779b97f4a7c15ull * ++emu_launches;
  std::vector<int> rc(n, 0);
  std::vector<std::thread> blocks;
  for (unsigned b = 0; b < n; b++) {
    blocks.emplace_back([=, &rc] {
      std::vector<unsigned char> smem = emu_smem(shared);
      unsigned long long rng = seed + 0x2545f4914f6cdd1dull * (b + 1);
      rc[b] = emu_setup(kernel, args, gx, gy, gz, block, smem) || emu_block(b, rng) ? 1 : emu_smem_intact(smem, shared) ? 0 : 2;
      // this OS thread's fibers and stacks go with it
      std::vector<EmuFiber>().swap(emu_fibers);
      free(emu_stacks);
      emu_stacks = nullptr;
      emu_stacks_len = 0;
    });
  }
  int failed = 0;
  for (unsigned b = 0; b < n; b++) {
    blocks[b].join();
    failed = failed ? failed : rc[b];
  }
  return failed;
}
