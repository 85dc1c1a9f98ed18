//! The built-in inference engine: GGUF and safetensors LLaMA-family models on the CPU, or on an
//! NVIDIA GPU ([`cuda`]) chosen at run time ([`device`]).
//!
//! Nothing in here knows about suites or metrics; [`crate::model::builtin`] adapts it to the
//! harness. On the CPU, weights stay in their file format (memory-mapped GGUF blocks, or
//! safetensors f32/f16/bf16) and are multiplied by [`kernels`] directly, so loading is instant and
//! memory is the file's size.

pub mod chat_template;
pub mod cuda;
pub mod device;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod load;
pub mod numerics;
pub mod quant;
pub mod session;
pub mod tokenizer;

use std::sync::Arc;

pub use load::{Engine, EngineError};

/// Bytes of a weight: a range of a memory-mapped file, or owned.
#[derive(Clone)]
pub enum Bytes {
    /// Tensor `tensor` of a GGUF file.
    Gguf { file: Arc<gguf::Gguf>, tensor: usize },
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Gguf { file, tensor } => file.data(&file.tensors[*tensor]),
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

/// A weight matrix: `rows` output features × `cols` inputs, rows contiguous.
#[derive(Clone)]
pub struct Matrix {
    pub ty: kernels::WType,
    pub rows: usize,
    pub cols: usize,
    pub data: Bytes,
}

impl Matrix {
    fn weight(&self) -> kernels::Weight<'_> {
        kernels::Weight { ty: self.ty, rows: self.rows, cols: self.cols, data: self.data.as_slice() }
    }

    /// out[n × rows] = x[n × cols] · selfᵀ; `exact` keeps activations in f32.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32], exact: bool) {
        if exact {
            kernels::matmul_f32_exact(&self.weight(), x, n, out);
        } else {
            kernels::matmul(&self.weight(), x, n, out);
        }
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        kernels::dequantize_row(&self.weight(), r, out);
    }
}

/// Runs `f(row_index, row)` over the `width`-sized rows of `out` on the kernels' thread pool.
pub fn parallel_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    struct Rows(*mut f32);
    // SAFETY: the pointer is only used to hand out disjoint rows, one per task index.
    unsafe impl Sync for Rows {}
    let n = out.len() / width;
    let rows = Rows(out.as_mut_ptr());
    let rows = &rows;
    kernels::parallel_for(n, &|i| {
        // SAFETY: `parallel_for` runs each index in 0..n exactly once, so rows never overlap, and
        // `out` outlives the call.
        let row = unsafe { std::slice::from_raw_parts_mut(rows.0.add(i * width), width) };
        f(i, row);
    });
}

impl Matrix {
    /// Re-lays Q4_0/Q4_1/Q8_0 weights into the kernels' interleaved panels (faster matmuls);
    /// other types stay as they are, in place.
    ///
    /// Q5_0, and Q4_0 with a row count llama.cpp does not repack (not a multiple of 8), become
    /// Q8_0 first ([`quant::as_q8_0`]: the same values in 34 bytes a block instead of 22 or 18),
    /// so that their products are llama.cpp's bit for bit.
    pub fn packed(self) -> Matrix {
        let as_q8 = match self.ty {
            kernels::WType::Q5_0 => Some(gguf::GgmlType::Q5_0),
            kernels::WType::Q4_0 if !self.rows.is_multiple_of(8) => Some(gguf::GgmlType::Q4_0),
            _ => None,
        };
        if let Some(data) = as_q8.and_then(|ty| quant::as_q8_0(ty, self.data.as_slice())) {
            return Matrix { ty: kernels::WType::Q8_0, data: Bytes::Owned(Arc::new(data)), ..self }.packed();
        }
        match kernels::pack(&self.weight()) {
            Some(p) => Matrix { ty: p.ty, rows: p.rows, cols: p.cols, data: Bytes::Owned(Arc::new(p.data)) },
            None => self,
        }
    }
}
