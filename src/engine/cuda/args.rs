//! The kernels' argument structs, field for field as in `kernels.cu` (each kernel takes one such
//! struct by value); a test parses the CUDA source and checks names, order and types.

/// A device address (a pointer in the kernel's struct).
pub type DPtr = u64;

/// The kernels of `kernels.cu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Embed,
    RmsNorm,
    RopeStore,
    Attention,
    Swiglu,
    LogitsReduce,
    Matvec,
}

impl Kernel {
    pub const ALL: [Kernel; 7] = [Kernel::Embed, Kernel::RmsNorm, Kernel::RopeStore, Kernel::Attention, Kernel::Swiglu, Kernel::LogitsReduce, Kernel::Matvec];

    /// The `extern "C"` name in the source.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embed => "embed",
            Kernel::RmsNorm => "rms_norm",
            Kernel::RopeStore => "rope_store",
            Kernel::Attention => "attention",
            Kernel::Swiglu => "swiglu",
            Kernel::LogitsReduce => "logits_reduce",
            Kernel::Matvec => "matvec",
        }
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
    n: i32, nh: i32, nkv: i32, hd: i32, bs: i32,
});
kernel_args!(AttnArgs => Attention {
    qkv: DPtr, kc: DPtr, vc: DPtr, tiles: DPtr, pos: DPtr, blk_off: DPtr, tables: DPtr, part_acc: DPtr, part_ml: DPtr, counters: DPtr, att: DPtr,
    n_tiles: i32, nh: i32, nkv: i32, hd: i32, bs: i32, split_len: i32, max_splits: i32, scale: f32,
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
    nh: i32, nkv: i32, hd: i32, bs: i32, m: i32, n: i32, k: i32, mode: i32, out: i32, accumulate: i32, eps: f32,
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

/// A kernel, its argument struct's name and fields.
pub type ArgsInfo = (Kernel, &'static str, &'static [(&'static str, &'static str)]);

/// Every argument struct's (kernel, struct name, fields), for the source check.
pub fn all() -> Vec<ArgsInfo> {
    fn one<A: KernelArgs>() -> ArgsInfo {
        (A::KERNEL, A::STRUCT, A::FIELDS)
    }
    vec![one::<EmbedArgs>(), one::<NormArgs>(), one::<RopeArgs>(), one::<AttnArgs>(), one::<SwigluArgs>(), one::<ReduceArgs>(), one::<MatvecArgs>()]
}
