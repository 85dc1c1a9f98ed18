//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json` and `tokenizer_config.json`.
//!
//! Safetensors files are memory-mapped and their f32/f16/bf16 tensors used in place; HF weights
//! keep the half-split rotary layout, so no un-permuting is needed.

use super::kernels::WType;
use super::llama::{Config, ConfigKeys, LayerNames, Llama, RopeStyle};
use super::load::{EngineError, ModelInfo, Tok};
use super::{Bytes, Engine, Matrix};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

fn err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Model { path: path.to_path_buf(), message: message.into() }
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("invalid JSON: {e}")))
}

struct Tensor {
    ty: WType,
    shape: Vec<usize>,
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
}

/// Reads a safetensors file's header and maps its data.
fn open_safetensors(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<(), EngineError> {
    let file = std::fs::File::open(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    // SAFETY: the file is opened read-only and not modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?);
    if map.len() < 8 {
        return Err(err(path, "truncated safetensors file (no header length)"));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
    if n > map.len() - 8 {
        return Err(err(path, format!("safetensors header of {n} bytes runs past the end of the file ({} bytes)", map.len())));
    }
    let header: Value = serde_json::from_slice(&map[8..8 + n]).map_err(|e| err(path, format!("invalid safetensors header: {e}")))?;
    let base = 8 + n;
    let Value::Object(entries) = header else { return Err(err(path, "safetensors header is not an object")) };
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap_or("");
        let ty = match dtype {
            "F32" => WType::F32,
            "F16" => WType::F16,
            "BF16" => WType::BF16,
            other => return Err(err(path, format!("tensor {name}: unsupported dtype {other:?} (F32, F16, BF16 are)"))),
        };
        let shape: Vec<usize> = v["shape"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|u| u as usize)).collect()).unwrap_or_default();
        let off: Vec<usize> = v["data_offsets"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|u| u as usize)).collect()).unwrap_or_default();
        if off.len() != 2 || off[0] > off[1] || base + off[1] > map.len() {
            return Err(err(path, format!("tensor {name}: data offsets {off:?} lie outside the file")));
        }
        let elem = if ty == WType::F32 { 4 } else { 2 };
        if shape.iter().product::<usize>() * elem != off[1] - off[0] {
            return Err(err(path, format!("tensor {name}: shape {shape:?} does not match its {} bytes", off[1] - off[0])));
        }
        out.insert(name, Tensor { ty, shape, map: map.clone(), start: base + off[0], len: off[1] - off[0] });
    }
    Ok(())
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    let b = &t.map[t.start..t.start + t.len];
    match t.ty {
        WType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        WType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}

fn token_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Loads a Hugging Face LLaMA-family directory.
pub fn load(dir: &Path) -> Result<Engine, EngineError> {
    let cfg = read_json(&dir.join("config.json"))?;
    let cpath = dir.join("config.json");
    let arch = cfg["model_type"].as_str().unwrap_or("").to_string();
    if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
        return Err(err(&cpath, format!("unsupported model_type {arch:?}; llmeval runs llama, mistral and qwen2 models")));
    }
    let get = |k: &str| cfg[k].as_u64().map(|v| v as usize).ok_or_else(|| err(&cpath, format!("{k} is missing or not an integer")));
    let dim = get("hidden_size")?;
    let n_heads = get("num_attention_heads")?;
    let n_kv_heads = cfg["num_key_value_heads"].as_u64().map_or(n_heads, |v| v as usize);
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(err(&cpath, format!("inconsistent head counts: {n_heads} heads, {n_kv_heads} kv heads")));
    }
    let head_dim = cfg["head_dim"].as_u64().map_or(dim / n_heads, |v| v as usize);
    let config = Config {
        arch: arch.clone(),
        n_layers: get("num_hidden_layers")?,
        dim,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: get("intermediate_size")?,
        vocab: get("vocab_size")?,
        ctx_len: cfg["max_position_embeddings"].as_u64().map_or(4096, |v| v as usize),
        rope_theta: cfg["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
        rms_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        rope_style: RopeStyle::Half,
    };
    let keys = ConfigKeys {
        n_layers: "num_hidden_layers".into(),
        head_dim: "head_dim".into(),
        ffn_dim: "intermediate_size".into(),
        vocab: "vocab_size".into(),
        ctx_len: "max_position_embeddings".into(),
        rope_theta: "rope_theta".into(),
        rms_eps: "rms_norm_eps".into(),
    };
    config.check(&keys).map_err(|m| err(&cpath, m))?;

    let mut tensors = HashMap::new();
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let idx = read_json(&index)?;
        let mut files: Vec<String> = idx["weight_map"].as_object().map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
        files.sort();
        files.dedup();
        for f in files {
            open_safetensors(&dir.join(f), &mut tensors)?;
        }
    } else {
        open_safetensors(&dir.join("model.safetensors"), &mut tensors)?;
    }
    let wpath = dir.join("model.safetensors");
    let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, EngineError> {
        let t = tensors.get(name).ok_or_else(|| err(&wpath, format!("tensor {name} is missing")))?;
        if t.shape != [rows, cols] {
            return Err(err(&wpath, format!("tensor {name} has shape {:?}, expected [{rows}, {cols}]", t.shape)));
        }
        Ok(Matrix { ty: t.ty, rows, cols, data: Bytes::Mapped { map: t.map.clone(), start: t.start, len: t.len } })
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>, EngineError> {
        let t = tensors.get(name).ok_or_else(|| err(&wpath, format!("tensor {name} is missing")))?;
        if t.shape != [n] {
            return Err(err(&wpath, format!("tensor {name} has shape {:?}, expected [{n}]", t.shape)));
        }
        let out = to_f32(t);
        super::llama::check_finite(name, &out).map_err(|m| err(&wpath, m))?;
        Ok(out)
    };
    let opt = |name: &str, n: usize| if tensors.contains_key(name) { vector(name, n).map(Some) } else { Ok(None) };
    const HF_NAMES: LayerNames = LayerNames {
        attn_norm: "model.layers.{l}.input_layernorm.weight",
        q: "model.layers.{l}.self_attn.q_proj.weight",
        k: "model.layers.{l}.self_attn.k_proj.weight",
        v: "model.layers.{l}.self_attn.v_proj.weight",
        o: "model.layers.{l}.self_attn.o_proj.weight",
        q_bias: "model.layers.{l}.self_attn.q_proj.bias",
        k_bias: "model.layers.{l}.self_attn.k_proj.bias",
        v_bias: "model.layers.{l}.self_attn.v_proj.bias",
        ffn_norm: "model.layers.{l}.post_attention_layernorm.weight",
        gate: "model.layers.{l}.mlp.gate_proj.weight",
        up: "model.layers.{l}.mlp.up_proj.weight",
        down: "model.layers.{l}.mlp.down_proj.weight",
    };
    let c = &config;
    let layers = super::llama::build_layers(c, &HF_NAMES, matrix, vector, opt)?;
    let tok_embd = matrix("model.embed_tokens.weight", c.vocab, dim)?;
    let lm_head = if tensors.contains_key("lm_head.weight") { matrix("lm_head.weight", c.vocab, dim)? } else { tok_embd.clone() };
    let out_norm = vector("model.norm.weight", dim)?;

    let tpath = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tpath).map_err(|e| err(&tpath, format!("cannot load tokenizer: {e}")))?;
    let tcfg = if dir.join("tokenizer_config.json").exists() { read_json(&dir.join("tokenizer_config.json"))? } else { Value::Null };
    let chat_template = match &tcfg["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
        _ => None,
    };
    let id_of = |key: &str, cfg_key: &str| token_field(&tcfg[key]).and_then(|s| tokenizer.token_to_id(&s)).or_else(|| cfg[cfg_key].as_u64().map(|v| v as u32));
    let bos = id_of("bos_token", "bos_token_id");
    let eos: Vec<u32> = id_of("eos_token", "eos_token_id").into_iter().collect();
    let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(false);
    let mut tensor_types = BTreeMap::new();
    let mut parameters = 0u64;
    for t in tensors.values() {
        *tensor_types.entry(format!("{:?}", t.ty)).or_insert(0) += 1;
        parameters += t.shape.iter().product::<usize>() as u64;
    }
    let info = ModelInfo {
        path: dir.display().to_string(),
        format: "Hugging Face safetensors".into(),
        name: cfg["_name_or_path"].as_str().map(str::to_string),
        parameters,
        tensor_types,
        file_bytes: tensors.values().map(|t| t.len as u64).sum(),
        tokenizer: "tokenizer.json".into(),
        bos,
        eos: eos.clone(),
        add_bos,
        chat_template: chat_template.is_some(),
        ..ModelInfo::of_config(c)
    };
    let model = Llama::new(config, tok_embd, layers, out_norm, lm_head);
    Ok(Engine::assemble(model, Tok::Hf(Box::new(tokenizer)), chat_template, bos, eos, add_bos, info))
}
