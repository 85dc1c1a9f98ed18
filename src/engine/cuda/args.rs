//! The kernels' argument structs, field for field as in `kernels.cu` (each kernel takes one such
//! struct by value); a test parses the CUDA source and checks names, order and types.

/// A device address (a pointer in the kernel's struct).
pub type DPtr = u64;

/// Declares [`Kernel`]: each variant with its `extern "C"` name in `kernels.cu`, in one list.
macro_rules! kernels {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// The kernels of `kernels.cu`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Kernel {
            $($(#[$doc])* $variant,)*
        }

        impl Kernel {
            /// Every kernel, in the order declared.
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant),*];

            /// The `extern "C"` name in the source.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => $name,)*
                }
            }
        }
    };
}

kernels! {
    Embed => "embed",
    RmsNorm => "rms_norm",
    RopeStore => "rope_store",
    /// attention for any head_dim, and its bodies for head_dim 64 and 128
    Attention => "attention",
    AttentionHd64 => "attention_hd64",
    AttentionHd128 => "attention_hd128",
    /// the decode step's attention (warps on keys) for head_dim 32, 64 and 128
    AttentionDecHd32 => "attention_dec_hd32",
    AttentionDecHd64 => "attention_dec_hd64",
    AttentionDecHd128 => "attention_dec_hd128",
    Swiglu => "swiglu",
    LogitsReduce => "logits_reduce",
    /// the decode products, one kernel per [`MvShape`] body (`matvec` is the first; a shape with
    /// a block cap runs its uncapped twin's kernel)
    Matvec => "matvec",
    MatvecW8R2U8 => "matvec_w8r2u8",
    MatvecW8R1U8 => "matvec_w8r1u8",
    MatvecW4R2U4P => "matvec_w4r2u4p",
    MatvecW4R2U8 => "matvec_w4r2u8",
    MatvecW4R1U8 => "matvec_w4r1u8",
    MatvecW4R1U4P => "matvec_w4r1u4p",
    MatvecW8R1U4P => "matvec_w8r1u4p",
    MatvecW8R2U4S => "matvec_w8r2u4_s",
    MatvecW4R2U4PS => "matvec_w4r2u4p_s",
    MatvecW8R2Q8S => "matvec_w8r2q8_s",
    MatvecW4R2Q16S => "matvec_w4r2q16_s",
    /// a decode step's layers and LM head in one cooperative launch, for head_dim 32, 64 and 128
    DecodeStepHd32 => "decode_step_hd32",
    DecodeStepHd64 => "decode_step_hd64",
    DecodeStepHd128 => "decode_step_hd128",
}

impl Kernel {
    /// The kernel whose argument struct this one takes (itself, `Matvec` for its shapes,
    /// `Attention` for its head sizes).
    pub fn family(self) -> Kernel {
        match self {
            _ if MV_SHAPES.iter().any(|s| s.kernel == self) => Kernel::Matvec,
            Kernel::AttentionHd64 | Kernel::AttentionHd128 | Kernel::AttentionDecHd32 | Kernel::AttentionDecHd64 | Kernel::AttentionDecHd128 => Kernel::Attention,
            Kernel::DecodeStepHd64 | Kernel::DecodeStepHd128 => Kernel::DecodeStepHd32,
            _ => self,
        }
    }

    /// The attention kernel for heads of `head_dim`.
    pub fn attention(head_dim: usize) -> Kernel {
        match head_dim {
            64 => Kernel::AttentionHd64,
            128 => Kernel::AttentionHd128,
            _ => Kernel::Attention,
        }
    }

    /// Whether a module compiled for heads of `head_dim` (`LLM_HD` in the source; 0: every size)
    /// holds this kernel: of attention's and the one-launch step's kernels it keeps those its
    /// model runs.
    pub fn compiled_for(self, head_dim: usize) -> bool {
        let per_head = matches!(self.family(), Kernel::Attention | Kernel::DecodeStepHd32);
        head_dim == 0 || !per_head || self == Kernel::attention(head_dim) || Kernel::attention_decode(head_dim) == Some(self) || Kernel::decode_step(head_dim) == Some(self)
    }

    /// The decode step's attention kernel for heads of `head_dim`, where there is one.
    pub fn attention_decode(head_dim: usize) -> Option<Kernel> {
        match head_dim {
            32 => Some(Kernel::AttentionDecHd32),
            64 => Some(Kernel::AttentionDecHd64),
            128 => Some(Kernel::AttentionDecHd128),
            _ => None,
        }
    }

    /// The one-launch decode step for heads of `head_dim`, where there is one.
    pub fn decode_step(head_dim: usize) -> Option<Kernel> {
        match head_dim {
            32 => Some(Kernel::DecodeStepHd32),
            64 => Some(Kernel::DecodeStepHd64),
            128 => Some(Kernel::DecodeStepHd128),
            _ => None,
        }
    }
}

/// One shape of the decode product kernel, `matvec_body<W, R, U, P, S, Q>` in the source: `warps`
/// warps a block, `rows` weight rows a warp, `unroll` 16-byte loads of a weight row in flight per
/// lane (or `queue` pieces of each row copied ahead into shared memory). Every shape sums each output in the same order, so which one runs changes the speed,
/// never the bits; the engine times them on a model's products when it loads (`mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MvShape {
    pub kernel: Kernel,
    pub warps: u32,
    pub rows: u32,
    pub unroll: u32,
    /// the next `unroll` loads go out before the arithmetic on the last ones
    pub pipelined: bool,
    /// at most this many blocks across the rows, each warp streaming several row groups in
    /// turn (0: a warp for each group)
    pub max_blocks: u32,
    /// the block's input rows are written once into shared memory (normalised, where the
    /// product's input is RMSNorm'd)
    pub staged: bool,
    /// a lane copies its weight rows' pieces into a ring of this many slots of its own in shared
    /// memory with `cp.async`, that many ahead of the one it multiplies (0: loads into
    /// registers, `unroll` at a time); staged shapes only
    pub queue: u32,
}

/// Input rows per block of the decode products (`MV_M` in the source).
pub const MV_M: usize = 8;

/// The most dynamic shared memory a block asks for (a staged product shape's input rows, the
/// decode attention's tiles): what A100- and H100-class cards give a block that opts in.
pub const SHARED_OPT_IN: usize = 160 << 10;

const fn shape(kernel: Kernel, warps: u32, rows: u32, unroll: u32, pipelined: bool, max_blocks: u32, staged: bool) -> MvShape {
    MvShape { kernel, warps, rows, unroll, pipelined, max_blocks, staged, queue: 0 }
}
/// A staged shape whose weights travel through a ring of `queue` slots a lane.
const fn queued(kernel: Kernel, warps: u32, queue: u32, max_blocks: u32) -> MvShape {
    MvShape { kernel, warps, rows: 2, unroll: 1, pipelined: false, max_blocks, staged: true, queue }
}

/// The decode products' shapes (a capped one, `max_blocks` > 0, runs its uncapped twin's kernel);
/// the first is the one used when nothing was timed.
pub const MV_SHAPES: [MvShape; 18] = [
    shape(Kernel::Matvec, 8, 2, 4, false, 0, false),
    shape(Kernel::MatvecW8R2U8, 8, 2, 8, false, 0, false),
    shape(Kernel::MatvecW8R1U8, 8, 1, 8, false, 0, false),
    shape(Kernel::MatvecW4R2U4P, 4, 2, 4, true, 0, false),
    shape(Kernel::MatvecW4R2U8, 4, 2, 8, false, 0, false),
    shape(Kernel::MatvecW4R1U8, 4, 1, 8, false, 0, false),
    shape(Kernel::MatvecW4R1U4P, 4, 1, 4, true, 0, false),
    shape(Kernel::MatvecW8R1U4P, 8, 1, 4, true, 0, false),
    shape(Kernel::Matvec, 8, 2, 4, false, 256, false),
    shape(Kernel::MatvecW4R2U4P, 4, 2, 4, true, 384, false),
    shape(Kernel::MatvecW4R1U4P, 4, 1, 4, true, 384, false),
    shape(Kernel::MatvecW8R2U4S, 8, 2, 4, false, 0, true),
    shape(Kernel::MatvecW4R2U4PS, 4, 2, 4, true, 0, true),
    shape(Kernel::MatvecW8R2U4S, 8, 2, 4, false, 256, true),
    shape(Kernel::MatvecW4R2U4PS, 4, 2, 4, true, 384, true),
    queued(Kernel::MatvecW8R2Q8S, 8, 8, 0),
    queued(Kernel::MatvecW4R2Q16S, 4, 16, 0),
    queued(Kernel::MatvecW8R2Q8S, 8, 8, 256),
];

/// The product shape a `decode_step` phase runs (`PH_MATVEC`): eight warps, as its attention.
pub const STEP_SHAPE: MvShape = MV_SHAPES[11];
/// … and for a product whose own launches run best with their weights through a ring
/// (`PH_MATVEC_RING`).
pub const STEP_RING_SHAPE: MvShape = MV_SHAPES[15];
/// Threads of a `decode_step` block.
pub const STEP_THREADS: u32 = 256;
// the step's products: blocks of its size, a warp holding a pair of rows (RoPE, SwiGLU), inputs in
// shared memory, and a grid the step sizes itself
const _: () = assert!(32 * STEP_SHAPE.warps == STEP_THREADS && STEP_SHAPE.rows == 2 && STEP_SHAPE.staged && STEP_SHAPE.max_blocks == 0 && STEP_SHAPE.queue == 0);
const _: () = assert!(STEP_RING_SHAPE.warps == STEP_SHAPE.warps && STEP_RING_SHAPE.rows == 2 && STEP_RING_SHAPE.max_blocks == 0 && STEP_RING_SHAPE.queue > 0);

impl MvShape {
    /// Threads a block.
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }
    /// The grid of a product of `m` input rows and `n` weight rows.
    pub fn grid(&self, m: usize, n: usize) -> [u32; 3] {
        let groups = n.div_ceil((self.warps * self.rows) as usize) as u32;
        [m.div_ceil(MV_M) as u32, if self.max_blocks > 0 { groups.min(self.max_blocks) } else { groups }, 1]
    }
    /// Dynamic shared memory of a launch on `m` input rows of `k` elements of `elem` bytes: the
    /// staged input rows (16-byte aligned), then each lane's ring of 16-byte pieces.
    pub fn shared(&self, m: usize, k: usize, elem: usize) -> u32 {
        if self.staged {
            ((m.min(MV_M) * k * elem).div_ceil(16) * 16 + (self.threads() * self.queue * self.rows) as usize * 16) as u32
        } else {
            0
        }
    }
    /// Whether it can run a product of output `out` with inputs of `k` elements of `elem` bytes:
    /// SwiGLU and RoPE need a warp to hold a pair of rows, a staged shape its shared memory
    /// within [`SHARED_OPT_IN`].
    pub fn runs(&self, out: i32, k: usize, elem: usize) -> bool {
        (out == MV_F32 || self.rows == 2) && (!self.staged || self.shared(MV_M, k, elem) as usize <= SHARED_OPT_IN)
    }
    /// `w8 r2 u4`, `w4 r2 u4 p` (pipelined), `w4 r2 u4 p ≤384` (at most 384 blocks), `… s`
    /// (staged), `w8 r2 q8 s` (a ring of 8 pieces a lane)
    pub fn name(&self) -> String {
        let cap = if self.max_blocks > 0 { format!(" ≤{}", self.max_blocks) } else { String::new() };
        let loads = if self.queue > 0 { format!("q{}", self.queue) } else { format!("u{}", self.unroll) };
        format!("w{} r{} {loads}{}{cap}{}", self.warps, self.rows, if self.pipelined { " p" } else { "" }, if self.staged { " s" } else { "" })
    }
}

/// A kernel's argument struct.
pub trait KernelArgs: Copy {
    const KERNEL: Kernel;
    /// The C struct's name.
    const STRUCT: &'static str;
    /// (field, Rust type) in order.
    const FIELDS: &'static [(&'static str, &'static str)];
    /// What a profile calls this launch.
    fn label(&self) -> String {
        Self::KERNEL.name().to_string()
    }
    /// Weight elements the launch reads (a profile turns them into achieved bandwidth).
    fn weights(&self) -> usize {
        0
    }
    /// The struct's bytes, as the kernel receives them.
    fn bytes(&self) -> &[u8] {
        // SAFETY: every implementor is a `#[repr(C)]` struct of u64/i32/f32 fields (see the
        // macro below), so all its bytes are initialised plain data.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), std::mem::size_of::<Self>()) }
    }
}

macro_rules! kernel_args {
    ($(#[$doc:meta])* $name:ident => $kernel:ident { $($field:ident : $ty:ident),* $(,)? } $(profile { $($item:item)* })?) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy)]
        pub struct $name { $(pub $field: $ty),* }
        impl KernelArgs for $name {
            const KERNEL: Kernel = Kernel::$kernel;
            const STRUCT: &'static str = stringify!($name);
            const FIELDS: &'static [(&'static str, &'static str)] = &[$((stringify!($field), stringify!($ty))),*];
            $($($item)*)?
        }
    };
}

kernel_args!(EmbedArgs => Embed { emb: DPtr, tok: DPtr, x: DPtr, d: i32, n: i32 });
kernel_args!(NormArgs => RmsNorm { x: DPtr, w: DPtr, rows: DPtr, out: DPtr, d: i32, n: i32, eps: f32 });
kernel_args!(RopeArgs => RopeStore {
    qkv: DPtr, bias: DPtr, inv_freq: DPtr, pos: DPtr, seq_of: DPtr, blk_off: DPtr, tables: DPtr, kc: DPtr, vc: DPtr,
    n: i32, nh: i32, nkv: i32, hd: i32,
});
kernel_args!(AttnArgs => Attention {
    qkv: DPtr, kc: DPtr, vc: DPtr, tiles: DPtr, pos: DPtr, blk_off: DPtr, tables: DPtr, part_acc: DPtr, part_ml: DPtr, counters: DPtr, att: DPtr,
    n_tiles: i32, nh: i32, nkv: i32, hd: i32, split_len: i32, max_splits: i32, row_stride: i32, scale: f32,
});
kernel_args!(SwigluArgs => Swiglu { gu: DPtr, act: DPtr, n: i32, ffn: i32 });
kernel_args!(ReduceArgs => LogitsReduce { logits: DPtr, target: DPtr, lp: DPtr, am: DPtr, vocab: i32, n: i32 });
/// `MatvecArgs::mode`, the input (`MV_PLAIN` … in the source): rows as stored, or RMSNorm made on
/// the fly.
pub const MV_PLAIN: i32 = 0;
pub const MV_NORM: i32 = 1;
/// `MatvecArgs::out`: f32 rows, SwiGLU of gate/up pairs, or RoPE'd q and k/v into the KV cache.
pub const MV_F32: i32 = 0;
pub const MV_GLU: i32 = 1;
pub const MV_QKV: i32 = 2;

kernel_args!(MatvecArgs => Matvec {
    a: DPtr, x: DPtr, norm_w: DPtr, rows: DPtr, w: DPtr, y: DPtr,
    bias: DPtr, inv_freq: DPtr, pos: DPtr, seq_of: DPtr, blk_off: DPtr, tables: DPtr, kc: DPtr, vc: DPtr,
    nh: i32, nkv: i32, hd: i32, m: i32, n: i32, k: i32, mode: i32, out: i32, accumulate: i32, eps: f32,
} profile {
    fn label(&self) -> String {
        let input = if self.mode == MV_NORM { "rmsnorm(x)" } else { "a" };
        let out = match (self.out, self.accumulate) {
            (MV_GLU, _) => " → swiglu",
            (MV_QKV, _) => " → rope, KV cache",
            (_, 0) => "",
            _ => " +=",
        };
        format!("matvec {}×{} · {input}[{}]{out}", self.n, self.k, self.m)
    }
    fn weights(&self) -> usize {
        self.n.max(0) as usize * self.k.max(0) as usize
    }
});

kernel_args!(
    /// `decode_step`: the phases' table (see [`PHASE_BYTES`]) and the grid barrier's two counters.
    StepArgs => DecodeStepHd32 { phases: DPtr, bar: DPtr, count: i32 }
);

/// Bytes of a phase's argument struct in a `decode_step` table, at most (`PH_ARGS`).
pub const PH_ARGS: usize = 256;
/// Bytes of one phase in a `decode_step` table: its kind and virtual grid (four 32-bit words),
/// then its argument struct, zero-padded to [`PH_ARGS`].
pub const PHASE_BYTES: usize = 16 + PH_ARGS;
/// A phase's kind: a product on [`STEP_SHAPE`], the decode attention, or a product on
/// [`STEP_RING_SHAPE`].
pub const PH_MATVEC: i32 = 0;
pub const PH_ATTENTION: i32 = 1;
pub const PH_MATVEC_RING: i32 = 2;

/// A phase of a `decode_step` table: `args` run by `kind`'s body over the virtual `grid`.
pub fn phase<A: KernelArgs>(kind: i32, grid: [u32; 3], args: &A) -> Vec<u8> {
    let mut out = Vec::with_capacity(PHASE_BYTES);
    out.extend_from_slice(&kind.to_le_bytes());
    for g in grid {
        out.extend_from_slice(&g.to_le_bytes());
    }
    const { assert!(std::mem::size_of::<A>() <= PH_ARGS, "an argument struct larger than a phase holds") };
    out.extend_from_slice(args.bytes());
    out.resize(PHASE_BYTES, 0);
    out
}

/// A kernel, its argument struct's name and fields.
pub type ArgsInfo = (Kernel, &'static str, &'static [(&'static str, &'static str)]);

/// Every argument struct's (kernel, struct name, fields), for the source check.
pub fn all() -> Vec<ArgsInfo> {
    fn one<A: KernelArgs>() -> ArgsInfo {
        (A::KERNEL, A::STRUCT, A::FIELDS)
    }
    vec![one::<EmbedArgs>(), one::<NormArgs>(), one::<RopeArgs>(), one::<AttnArgs>(), one::<SwigluArgs>(), one::<ReduceArgs>(), one::<MatvecArgs>(), one::<StepArgs>()]
}
