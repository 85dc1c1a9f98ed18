//! Loading a model (GGUF file or Hugging Face directory) into an [`Engine`]: weights, tokenizer,
//! chat template, special tokens, and a thread pool of its own.

use super::gguf::{Gguf, GgufError, MetaValue};
use super::kernels::WType;
use super::llama::{Cache, Config, ConfigKeys, LayerNames, Llama, RopeStyle};
use super::tokenizer::{Tokenizer, TokenizerSpec};
use super::{Bytes, Matrix};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: chat template: {message}")]
    Template { origin: String, message: String },
    #[error(transparent)]
    Device(#[from] super::device::DeviceError),
    #[error("a continuation of {tokens} tokens does not fit the model's context of {context} tokens (it needs at least one token of context before it)")]
    TooLong { tokens: usize, context: usize },
}

fn model_err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Model { path: path.to_path_buf(), message: message.into() }
}

/// Which tokenizer a model uses.
pub enum Tok {
    /// Built from GGUF metadata, as llama.cpp does.
    Gguf(Box<Tokenizer>),
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

/// Facts about a loaded model, for `llmeval engine info`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub format: String,
    pub architecture: String,
    pub name: Option<String>,
    pub parameters: u64,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub tensor_types: std::collections::BTreeMap<String, usize>,
    pub file_bytes: u64,
    pub tokenizer: String,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: bool,
}

impl ModelInfo {
    /// The facts every format takes from the model's [`Config`] the same way; a loader adds its
    /// own (`ModelInfo { path, format, …, ..ModelInfo::of_config(c) }`).
    pub fn of_config(c: &Config) -> ModelInfo {
        ModelInfo {
            architecture: c.arch.clone(),
            layers: c.n_layers,
            dim: c.dim,
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            vocab: c.vocab,
            context_length: c.ctx_len,
            rope_theta: c.rope_theta,
            ..ModelInfo::default()
        }
    }
}

/// A loaded model ready to run.
pub struct Engine {
    pub model: Llama,
    pub tok: Tok,
    pub chat_template: Option<String>,
    pub bos: Option<u32>,
    /// Tokens that end a generation.
    pub eos: Vec<u32>,
    pub add_bos: bool,
    pub info: ModelInfo,
    /// The model's copy on a GPU, when [`Engine::place`] put it there; scoring and generation
    /// then run on it, and `model` (the CPU engine) only serves as its source.
    pub gpu: Option<super::cuda::GpuModel>,
}

fn meta_usize(g: &Gguf, key: &str) -> Result<usize, EngineError> {
    g.meta(key).and_then(MetaValue::as_u64).map(|v| v as usize).ok_or_else(|| model_err(g.path(), format!("metadata key {key} is missing or not an integer")))
}

fn wtype(ty: super::gguf::GgmlType) -> WType {
    use super::gguf::GgmlType as G;
    match ty {
        G::F32 => WType::F32,
        G::F16 => WType::F16,
        G::BF16 => WType::BF16,
        G::Q4_0 => WType::Q4_0,
        G::Q4_1 => WType::Q4_1,
        G::Q5_0 => WType::Q5_0,
        G::Q5_1 => WType::Q5_1,
        G::Q8_0 => WType::Q8_0,
        G::Q4K => WType::Q4K,
        G::Q5K => WType::Q5K,
        G::Q6K => WType::Q6K,
    }
}

impl Engine {
    /// Loads a GGUF file or a Hugging Face directory, with `threads` compute threads.
    pub fn load(path: &Path, threads: usize) -> Result<Engine, EngineError> {
        // The kernels' pool is process-wide: the last model loaded sets its size.
        super::kernels::set_threads(threads.max(1));
        if path.is_dir() {
            return super::hf::load(path);
        }
        if !path.exists() {
            return Err(model_err(path, "no such file; fetch the default model with scripts/fetch-model.sh, or give a GGUF file or a Hugging Face directory"));
        }
        let g = Arc::new(Gguf::open(path)?);
        Self::from_gguf(g)
    }

    fn from_gguf(g: Arc<Gguf>) -> Result<Engine, EngineError> {
        let path = g.path().to_path_buf();
        let arch = g.meta("general.architecture").and_then(MetaValue::as_str).unwrap_or("").to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Half,
            other => return Err(model_err(&path, format!("unsupported architecture {other:?}; llmeval runs llama, mistral and qwen2 models"))),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let dim = meta_usize(&g, &k("embedding_length"))?;
        let n_heads = meta_usize(&g, &k("attention.head_count"))?;
        let n_kv_heads = g.meta(&k("attention.head_count_kv")).and_then(MetaValue::as_u64).map_or(n_heads, |v| v as usize);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || dim % n_heads != 0 {
            return Err(model_err(&path, format!("inconsistent head counts: {n_heads} heads, {n_kv_heads} kv heads, dim {dim}")));
        }
        let head_dim = g.meta(&k("attention.key_length")).and_then(MetaValue::as_u64).map_or(dim / n_heads, |v| v as usize);
        let tokens: Vec<String> = match g.meta("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
            Some(a) => a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect(),
            None => return Err(model_err(&path, "no tokenizer.ggml.tokens: the file carries no tokenizer")),
        };
        let config = Config {
            arch: arch.clone(),
            n_layers: meta_usize(&g, &k("block_count"))?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: meta_usize(&g, &k("feed_forward_length"))?,
            vocab: tokens.len(),
            ctx_len: meta_usize(&g, &k("context_length")).unwrap_or(4096),
            rope_theta: g.meta(&k("rope.freq_base")).and_then(MetaValue::as_f64).unwrap_or(10_000.0) as f32,
            rms_eps: g.meta(&k("attention.layer_norm_rms_epsilon")).and_then(MetaValue::as_f64).unwrap_or(1e-5) as f32,
            rope_style,
        };
        let keys = ConfigKeys {
            n_layers: k("block_count"),
            head_dim: k("attention.key_length"),
            ffn_dim: k("feed_forward_length"),
            vocab: "tokenizer.ggml.tokens".into(),
            ctx_len: k("context_length"),
            rope_theta: k("rope.freq_base"),
            rms_eps: k("attention.layer_norm_rms_epsilon"),
        };
        config.check(&keys).map_err(|m| model_err(&path, m))?;

        let index = |name: &str| g.tensors.iter().position(|t| t.name == name);
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, EngineError> {
            let i = index(name).ok_or_else(|| model_err(&path, format!("tensor {name} is missing")))?;
            let t = &g.tensors[i];
            if t.dims.len() != 2 || t.dims[0] != cols || t.dims[1] != rows {
                return Err(model_err(&path, format!("tensor {name} has shape {:?}, expected [{cols}, {rows}]", t.dims)));
            }
            Ok(Matrix { ty: wtype(t.ty), rows, cols, data: Bytes::Gguf { file: g.clone(), tensor: i } }.packed())
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, EngineError> {
            let i = index(name).ok_or_else(|| model_err(&path, format!("tensor {name} is missing")))?;
            let t = &g.tensors[i];
            if t.dims.iter().product::<usize>() != n {
                return Err(model_err(&path, format!("tensor {name} has shape {:?}, expected [{n}]", t.dims)));
            }
            let mut out = vec![0f32; n];
            super::quant::dequantize(t.ty, g.data(t), &mut out).map_err(|e| model_err(&path, format!("tensor {name}: {e}")))?;
            super::llama::check_finite(name, &out).map_err(|m| model_err(&path, m))?;
            Ok(out)
        };
        let opt_vector = |name: &str, n: usize| -> Result<Option<Vec<f32>>, EngineError> { if index(name).is_some() { vector(name, n).map(Some) } else { Ok(None) } };
        const GGUF_NAMES: LayerNames = LayerNames {
            attn_norm: "blk.{l}.attn_norm.weight",
            q: "blk.{l}.attn_q.weight",
            k: "blk.{l}.attn_k.weight",
            v: "blk.{l}.attn_v.weight",
            o: "blk.{l}.attn_output.weight",
            q_bias: "blk.{l}.attn_q.bias",
            k_bias: "blk.{l}.attn_k.bias",
            v_bias: "blk.{l}.attn_v.bias",
            ffn_norm: "blk.{l}.ffn_norm.weight",
            gate: "blk.{l}.ffn_gate.weight",
            up: "blk.{l}.ffn_up.weight",
            down: "blk.{l}.ffn_down.weight",
        };
        let c = &config;
        let layers = super::llama::build_layers(c, &GGUF_NAMES, matrix, vector, opt_vector)?;
        let tok_embd = matrix("token_embd.weight", c.vocab, dim)?;
        let lm_head = if index("output.weight").is_some() { matrix("output.weight", c.vocab, dim)? } else { tok_embd.clone() };
        let out_norm = vector("output_norm.weight", dim)?;

        let strings = |key: &str| -> Vec<String> { g.meta(key).and_then(MetaValue::as_array).map(|a| a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect()).unwrap_or_default() };
        let id = |key: &str| g.meta(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let model_kind = g.meta("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("gpt2").to_string();
        let add_bos = g.meta("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(model_kind == "llama");
        let spec = TokenizerSpec {
            model: model_kind.clone(),
            pre: g.meta("tokenizer.ggml.pre").and_then(MetaValue::as_str).map(str::to_string),
            tokens,
            token_types: g.meta("tokenizer.ggml.token_type").and_then(MetaValue::as_array).map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect()).unwrap_or_default(),
            scores: g.meta("tokenizer.ggml.scores").and_then(MetaValue::as_array).map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()).unwrap_or_default(),
            merges: strings("tokenizer.ggml.merges"),
            bos,
            eos: eos_id,
            unk: id("tokenizer.ggml.unknown_token_id"),
            add_bos,
            add_space_prefix: g.meta("tokenizer.ggml.add_space_prefix").and_then(MetaValue::as_bool).unwrap_or(model_kind == "llama"),
        };
        let tokenizer = Tokenizer::new(spec).map_err(|e| model_err(&path, format!("tokenizer: {e}")))?;
        let chat_template = g.meta("tokenizer.chat_template").and_then(MetaValue::as_str).map(str::to_string);
        let mut eos: Vec<u32> = eos_id.into_iter().collect();
        // Chat models end a turn with an end-of-turn token that may differ from EOS.
        for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(i) = (0..tokenizer.vocab_size() as u32).find(|&i| tokenizer.token_str(i) == name)
                && !eos.contains(&i) && chat_template.as_deref().is_some_and(|t| t.contains(name))
            {
                eos.push(i);
            }
        }
        let mut tensor_types = std::collections::BTreeMap::new();
        let mut parameters = 0u64;
        for t in &g.tensors {
            *tensor_types.entry(t.ty.name().to_string()).or_insert(0) += 1;
            parameters += t.dims.iter().product::<usize>() as u64;
        }
        let info = ModelInfo {
            path: path.display().to_string(),
            format: format!("GGUF v{}", g.version),
            name: g.meta("general.name").and_then(MetaValue::as_str).map(str::to_string),
            parameters,
            tensor_types,
            file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            tokenizer: format!("{model_kind} ({})", g.meta("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default")),
            bos,
            eos: eos.clone(),
            add_bos,
            chat_template: chat_template.is_some(),
            ..ModelInfo::of_config(c)
        };
        let model = Llama::new(config, tok_embd, layers, out_norm, lm_head);
        Ok(Engine { model, tok: Tok::Gguf(Box::new(tokenizer)), chat_template, bos, eos, add_bos, info, gpu: None })
    }

    pub(super) fn assemble(model: Llama, tok: Tok, chat_template: Option<String>, bos: Option<u32>, eos: Vec<u32>, add_bos: bool, info: ModelInfo) -> Engine {
        Engine { model, tok, chat_template, bos, eos, add_bos, info, gpu: None }
    }

    /// Token ids of `text` (special tokens parsed, no BOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.tok {
            Tok::Gguf(t) => t.encode(text),
            Tok::Hf(t) => t.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.tok {
            Tok::Gguf(t) => t.decode(ids),
            Tok::Hf(t) => t.decode(ids, false).unwrap_or_default(),
        }
    }

    /// Runs `f` (the kernels parallelise inside it on their own pool).
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// A fresh KV cache.
    pub fn cache(&self) -> Cache {
        Cache::new(self.model.config.n_layers)
    }

    /// Renders a conversation with the model's chat template (generation prompt added).
    pub fn render_chat(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        let error = |message: String| EngineError::Template { origin: self.chat_template_origin(), message };
        let template = self.chat_template.as_deref().ok_or_else(|| error("the model has none; give the prompt as plain text (drop the task's `chat = true`, or --chat)".into()))?;
        let tok = |id: Option<u32>| id.map(|i| self.decode_token(i)).unwrap_or_default();
        super::chat_template::render(template, messages, true, &tok(self.bos), &tok(self.eos.first().copied())).map_err(error)
    }

    /// Where the chat template comes from: the GGUF metadata key or the Hugging Face file.
    fn chat_template_origin(&self) -> String {
        match self.tok {
            Tok::Gguf(_) => format!("{} (metadata key tokenizer.chat_template)", self.info.path),
            Tok::Hf(_) => format!("{} (key chat_template)", Path::new(&self.info.path).join("tokenizer_config.json").display()),
        }
    }

    fn decode_token(&self, id: u32) -> String {
        match &self.tok {
            Tok::Gguf(t) => t.token_str(id).to_string(),
            Tok::Hf(t) => t.id_to_token(id).unwrap_or_default(),
        }
    }
}
