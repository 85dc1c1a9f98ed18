//! The built-in engine against llama.cpp on the default model (../shared/reference): tokenization,
//! continuation log-probabilities and greedy continuations; malformed model files; the Hugging
//! Face path on a safetensors copy of the same weights.

use crate::support::*;
use llmeval::engine::session::{GenOptions, ScoreRequest};
use llmeval::engine::kernels::WType;
use llmeval::engine::{Bytes, Engine, Matrix};
use std::sync::Arc;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn model_path() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(p.exists(), "the default model is missing: run scripts/fetch-model.sh (.ci/run does)");
    p
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&model_path(), 2).expect("load the default model"))
}

fn reference() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/llamacpp.json");
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e} (shared/ must sit beside the checkout)"));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenization_equals_llama_cpp() {
    let r = reference();
    let e = engine();
    for case in r["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(e.encode(text), ids(&case["ids"]), "tokens of {text:?}");
        assert_eq!(e.decode(&ids(&case["ids"])), text, "decode of {text:?}");
    }
    // letters and digits new in Unicode 16 are not letters or digits to llama.cpp (0.3.36's ids)
    for (text, want) in [("\u{a7cb}'s", vec![181, 249, 229, 23, 99]), ("  \u{1ccf0}", vec![216, 216, 187, 246, 128, 125]), ("\u{13460}'re", vec![187, 237, 235, 250, 23, 257])] {
        assert_eq!(e.encode(text), want, "tokens of {text:?}");
    }
}

/// Largest per-token log-probability difference allowed from llama.cpp. The issue's bar is 0.05
/// nats; the engine reproduces llama.cpp's arithmetic bit for bit (engine/numerics.rs and the
/// Q4_0, Q4_1, Q5_0 and Q8_0 kernels), so its f32 logits are llama.cpp's and only the f64 log-softmax's
/// summation order remains (~1e-13). Anything more means that reproduction broke — "merely close"
/// arithmetic misses by 0.1-0.4 nats on this 8-bit model, and one Q8_0 product (the tied LM head)
/// in its own order by ~1e-5.
const LLAMA_CPP_GAP: f64 = 1e-9;

fn extra() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/llamacpp_extra.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Scores every case as one batch (prefix sharing included) and returns the largest per-token
/// difference from the case's llama.cpp log-probabilities.
fn worst_logprob_gap(cases: &[Value]) -> f64 {
    let e = engine();
    let reqs: Vec<ScoreRequest> = cases
        .iter()
        .map(|c| {
            let ctx = e.encode(c["context"].as_str().unwrap());
            let cont = e.encode(c["continuation"].as_str().unwrap());
            assert_eq!(ctx, ids(&c["context_ids"]), "context tokens of {}", c["context"]);
            assert_eq!(cont, ids(&c["continuation_ids"]), "continuation tokens of {}", c["continuation"]);
            ScoreRequest { context: ctx, continuation: cont }
        })
        .collect();
    let mut got = vec![None; reqs.len()];
    e.score_batch(&reqs, &mut |i, s| got[i] = Some(s));
    let mut worst = 0f64;
    for (c, g) in cases.iter().zip(got) {
        let g = g.expect("every request scored");
        assert_eq!(g.is_greedy, c["is_greedy"].as_bool().unwrap(), "is_greedy of {} + {}", c["context"], c["continuation"]);
        for (ours, theirs) in g.token_logprobs.iter().zip(c["token_logprobs"].as_array().unwrap()) {
            let d = (ours - theirs.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d <= LLAMA_CPP_GAP, "{} + {}: {ours} vs llama.cpp {theirs}", c["context"], c["continuation"]);
        }
    }
    worst
}

/// Greedy continuations over their first `n` tokens: how many equal llama.cpp's.
fn identical_greedy(cases: &[Value], n: usize) -> usize {
    let e = engine();
    let mut same = 0;
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let prompt_ids = if c["chat"].as_bool().unwrap() { e.encode(&e.render_chat(&[("user".into(), prompt.into())]).unwrap()) } else { e.encode(prompt) };
        assert_eq!(prompt_ids, ids(&c["prompt_ids"]), "prompt tokens of {prompt:?}");
        let g = e.generate(&prompt_ids, &GenOptions { max_tokens: n, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] });
        let want: Vec<u32> = ids(&c["tokens"]).into_iter().take(n).collect();
        if g.tokens == want {
            same += 1;
        } else {
            eprintln!("differs on {prompt:?}: {:?} vs {:?}", e.decode(&g.tokens), e.decode(&want));
        }
    }
    same
}

#[test]
fn exact_forward_equals_float64_reference() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/engine_exact.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let mut e = Engine::load(&model_path(), 2).unwrap();
    e.model.exact = true;
    let mut worst = 0f64;
    for c in golden["score"].as_array().unwrap() {
        let req = ScoreRequest { context: e.encode(c["context"].as_str().unwrap()), continuation: e.encode(c["continuation"].as_str().unwrap()) };
        let mut got = None;
        e.score_batch(std::slice::from_ref(&req), &mut |_, s| got = Some(s));
        for (ours, want) in got.unwrap().token_logprobs.iter().zip(c["token_logprobs"].as_array().unwrap()) {
            let d = (ours - want.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d < 2e-3, "{} + {}: {ours} vs float64 {want}", c["context"], c["continuation"]);
        }
    }
    eprintln!("largest per-token difference from the float64 reference: {worst:.2e} nats");
}

/// ggml's reference quantizers (`quantize_row_{q4_0,q5_0,q5_1,q8_0}_ref`), which llama.cpp's
/// `llama_model_quantize` applies to f32 weights when given no importance matrix: per 32 values,
/// Q4_0/Q5_0 scale by the value of largest magnitude (the first such) over −8 or −16 and truncate
/// `x/d + 8.5` (or `+ 16.5`) capped at 15 (31); Q5_1 spans min..max in 31 steps and truncates
/// `(x − min)/d + 0.5`; Q8_0 scales by the largest magnitude over 127, rounding.
fn ggml_quantize(ty: &str, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    let five_bit = |out: &mut Vec<u8>, q: &[u8]| {
        let qh = (0..32).fold(0u32, |h, j| h | u32::from(q[j] >> 4) << j);
        out.extend_from_slice(&qh.to_le_bytes());
        out.extend((0..16).map(|j| (q[j] & 15) | (q[16 + j] & 15) << 4));
    };
    for b in x.chunks_exact(32) {
        if ty == "Q5_1" {
            let (min, max) = b.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (if v < lo { v } else { lo }, if v > hi { v } else { hi }));
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&half::f16::from_f32(min).to_le_bytes());
            let q: Vec<u8> = b.iter().map(|&v| ((v - min) * id + 0.5) as u8).collect();
            five_bit(&mut out, &q);
            continue;
        }
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                (amax, max) = (v.abs(), v);
            }
        }
        let d = match ty {
            "Q4_0" => max / -8.0,
            "Q5_0" => max / -16.0,
            _ => amax / 127.0,
        };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        match ty {
            "Q8_0" => out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8)),
            "Q4_0" => {
                let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | q(b[16 + j]) << 4));
            }
            _ => {
                let q: Vec<u8> = b.iter().map(|&v| ((v * id + 16.5) as i8).min(31) as u8).collect();
                five_bit(&mut out, &q);
            }
        }
    }
    out
}

/// `m` dequantized to f32 and quantized again to `ty`, as llama.cpp requantizes a model.
fn requantized(m: &Matrix, ty: &str) -> Matrix {
    let mut row = vec![0f32; m.cols];
    let mut x = Vec::with_capacity(m.rows * m.cols);
    for r in 0..m.rows {
        m.row(r, &mut row);
        x.extend_from_slice(&row);
    }
    let wty = match ty {
        "Q4_0" => WType::Q4_0,
        "Q5_0" => WType::Q5_0,
        "Q5_1" => WType::Q5_1,
        _ => WType::Q8_0,
    };
    Matrix { ty: wty, rows: m.rows, cols: m.cols, data: Bytes::Owned(Arc::new(ggml_quantize(ty, &x))) }.packed()
}

/// The default model requantized by llama.cpp to Q4_0, Q5_0 and Q5_1 (its layer matrices; the tied
/// Q8_0 embedding is quantized again as Q8_0): llmeval's scores and greedy tokens on the same
/// weights, made here in memory, are llama.cpp's (`tests/goldens/llamacpp_requant.json`).
#[test]
fn requantized_q4_0_q5_0_and_q5_1_models_equal_llama_cpp() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/llamacpp_requant.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    for ty in ["Q4_0", "Q5_0", "Q5_1"] {
        let mut e = Engine::load(&model_path(), 2).unwrap();
        for l in &mut e.model.layers {
            for m in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w_gate, &mut l.w_up, &mut l.w_down] {
                *m = requantized(m, ty);
            }
        }
        e.model.tok_embd = requantized(&e.model.tok_embd, "Q8_0");
        e.model.lm_head = e.model.tok_embd.clone();
        let cases = golden[ty]["score"].as_array().unwrap();
        let reqs: Vec<ScoreRequest> = cases.iter().map(|c| ScoreRequest { context: ids(&c["context_ids"]), continuation: ids(&c["continuation_ids"]) }).collect();
        let mut got = vec![None; reqs.len()];
        e.score_batch(&reqs, &mut |i, s| got[i] = Some(s));
        let mut worst = 0f64;
        for (c, g) in cases.iter().zip(got) {
            let g = g.expect("every request scored");
            assert_eq!(g.is_greedy, c["is_greedy"].as_bool().unwrap(), "{ty}: is_greedy of {c}");
            for (ours, theirs) in g.token_logprobs.iter().zip(c["token_logprobs"].as_array().unwrap()) {
                let d = (ours - theirs.as_f64().unwrap()).abs();
                worst = worst.max(d);
                assert!(d <= LLAMA_CPP_GAP, "{ty}: {ours} vs llama.cpp {theirs} in {}", c["continuation_ids"]);
            }
        }
        for c in golden[ty]["generate"].as_array().unwrap() {
            let g = e.generate(&ids(&c["prompt_ids"]), &GenOptions { max_tokens: 24, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] });
            assert_eq!(g.tokens, ids(&c["tokens"]), "{ty}: greedy tokens after {}", c["prompt_ids"]);
        }
        eprintln!("{ty}: largest per-token difference from llama.cpp {worst:.2e} nats over {} cases", cases.len());
    }
}

#[test]
fn continuation_logprobs_equal_llama_cpp() {
    let worst = worst_logprob_gap(reference()["score"].as_array().unwrap());
    eprintln!("largest per-token difference from llama.cpp (shared reference): {worst:.2e} nats");
}

#[test]
fn continuation_logprobs_equal_llama_cpp_on_more_text() {
    let worst = worst_logprob_gap(extra()["score"].as_array().unwrap());
    eprintln!("largest per-token difference from llama.cpp (tests/goldens/llamacpp_extra.json): {worst:.2e} nats");
}

#[test]
fn prefix_sharing_does_not_change_scores() {
    let e = engine();
    let ctx = e.encode("Question: What is the capital of France?\nAnswer:");
    let conts = [" Paris", " Berlin", " Madrid is the answer"];
    let reqs: Vec<ScoreRequest> = conts.iter().map(|c| ScoreRequest { context: ctx.clone(), continuation: e.encode(c) }).collect();
    let mut batched = [0.0; 3];
    e.score_batch(&reqs, &mut |i, s| batched[i] = s.logprob);
    for (i, r) in reqs.iter().enumerate() {
        let mut alone = 0.0;
        e.score_batch(std::slice::from_ref(r), &mut |_, s| alone = s.logprob);
        assert!((alone - batched[i]).abs() < 1e-3, "{}: {alone} alone vs {} batched", conts[i], batched[i]);
    }
}

#[test]
fn greedy_generation_matches_llama_cpp() {
    // The issue's bar is 90% over 16 tokens; with llama.cpp's arithmetic every one is identical,
    // over all the reference's 24 tokens too.
    for (name, cases) in [("shared reference", reference()["generate"].clone()), ("llamacpp_extra.json", extra()["generate"].clone())] {
        let cases = cases.as_array().unwrap();
        let same = identical_greedy(cases, 24);
        eprintln!("{same} of {} greedy continuations identical to llama.cpp over 24 tokens ({name})", cases.len());
        assert_eq!(same, cases.len(), "{name}: {same} of {} identical", cases.len());
    }
}

#[test]
fn cli_engine_forms() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let out = llmeval(&["engine", "tokenize", "--model", m, "--text", "Hello world! 123", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_out(&out)["ids"], serde_json::json!([19556, 905, 17, 216, 33, 34, 35]));
    let out = llmeval(&["engine", "score", "--model", m, "--context", "The capital of France is", "--continuation", " Paris", "--json"]);
    let v = json_out(&out);
    assert_eq!(v["tokens"], serde_json::json!([7042]));
    assert!((v["logprob"].as_f64().unwrap() - -0.2644).abs() < 0.05 && v["is_greedy"] == true, "{v}");
    // per token: the log-probabilities add up to the total, and the text lists each token
    let v = json_out(&llmeval(&["engine", "score", "--model", m, "--context", "The capital of France is", "--continuation", " Paris, a city", "--json"]));
    let lps: Vec<f64> = v["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(lps.len(), v["tokens"].as_array().unwrap().len());
    assert!(lps.len() == 4 && (lps.iter().sum::<f64>() - v["logprob"].as_f64().unwrap()).abs() < 1e-9 && lps.iter().all(|&x| x < 0.0), "{v}");
    let text = stdout(&llmeval(&["engine", "score", "--model", m, "--context", "The capital of France is", "--continuation", " Paris, a city"]));
    assert!(text.contains("4 token(s)") && text.contains("\" Paris\"") && text.contains("\" city\""), "{text}");
    // the texts exactly as given, as llama.cpp's reference: a trailing space stays in the context
    let kept = json_out(&llmeval(&["engine", "score", "--model", m, "--context", "The capital of France is ", "--continuation", "Paris", "--json"]));
    assert_eq!(kept["tokens"], serde_json::json!([38634]), "{kept}");
    let out = llmeval(&["engine", "generate", "--model", m, "--prompt", "The capital of France is", "--max-tokens", "4", "--json"]);
    let v = json_out(&out);
    assert_eq!(v["prompt_tokens"], serde_json::json!([504, 3575, 282, 4649, 314]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"), "{v}");
    let out = llmeval(&["engine", "info", m, "--json"]);
    let v = json_out(&out);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 30);
}

#[test]
fn engine_arguments_out_of_range_are_errors_before_any_work() {
    let m = model_path();
    let m = m.to_str().unwrap();
    // a continuation longer than the 8192-token context: an error at once (it panicked after
    // minutes of work)
    let long = " one".repeat(8300);
    let t = std::time::Instant::now();
    let out = llmeval(&["engine", "score", "--model", m, "--context", "Count:", "--continuation", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("a continuation of 8300 tokens does not fit the model's context of 8192 tokens"), "{}", stderr(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "{:?}", t.elapsed());
    for bad in ["0", "100000"] {
        let out = llmeval(&["engine", "tokenize", "--model", m, "--text", "hi", "--threads", bad]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(&format!("--threads {bad}: give 1 to 1024")), "{}", stderr(&out));
    }
    // an empty prompt (this model adds no BOS) gave an empty answer as if it were one
    let out = llmeval(&["engine", "generate", "--model", m, "--prompt", "", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--prompt is empty"), "{}", stderr(&out));
    let out = llmeval(&["engine", "score", "--model", m, "--context", "Hi", "--continuation", ""]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--continuation is empty"), "{}", stderr(&out));
}

#[test]
fn broken_model_files_give_one_clear_error() {
    let dir = TempDir::new("broken-gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    for (name, data) in [
        ("empty.gguf", Vec::new()),
        ("magic.gguf", b"GGUX\x03\x00\x00\x00".to_vec()),
        ("header.gguf", bytes[..100].to_vec()),
        ("meta.gguf", bytes[..200_000].to_vec()),
        ("data.gguf", bytes[..bytes.len() / 2].to_vec()),
        ("random.gguf", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
    ] {
        let p = dir.write(name, "");
        std::fs::write(&p, &data).unwrap();
        let out = llmeval(&["engine", "info", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let e = stderr(&out);
        assert!(e.starts_with("error: ") && e.contains(name) && !e.contains("panicked"), "{name}: {e}");
    }
    let out = llmeval(&["engine", "info", dir.path().join("nope.gguf").to_str().unwrap()]);
    assert!(stderr(&out).contains("fetch-model"), "{}", stderr(&out));
}

/// Metadata and weights that load but cannot give a number: each is an error that names the file
/// and the key or tensor, before any work; NaN in a matrix the load does not scan errors the
/// items it spoils instead of storing NaN scores.
#[test]
fn damaged_model_values_are_errors_naming_the_key() {
    use llmeval::engine::gguf::Gguf;
    let dir = TempDir::new("damaged-model");
    let bytes = std::fs::read(model_path()).unwrap();
    // A metadata value sits after its key's bytes and a u32 type tag.
    let patch_meta = |key: &str, value: &[u8]| {
        let mut b = bytes.clone();
        let at = b.windows(key.len()).position(|w| w == key.as_bytes()).unwrap() + key.len() + 4;
        b[at..at + value.len()].copy_from_slice(value);
        b
    };
    let g = Gguf::open(&model_path()).unwrap();
    let tensor_at = |name: &str| g.tensor(name).unwrap().offset;
    let mut nan_norm = bytes.clone();
    let at = tensor_at("output_norm.weight");
    nan_norm[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    for (name, data, want) in [
        ("theta.gguf", patch_meta("llama.rope.freq_base", &f32::NAN.to_le_bytes()), "llama.rope.freq_base is NaN"),
        ("eps.gguf", patch_meta("llama.attention.layer_norm_rms_epsilon", &(-1f32).to_le_bytes()), "llama.attention.layer_norm_rms_epsilon is -1"),
        ("layers.gguf", patch_meta("llama.block_count", &0u32.to_le_bytes()), "llama.block_count is 0"),
        ("ctx.gguf", patch_meta("llama.context_length", &0u32.to_le_bytes()), "llama.context_length is 0"),
        ("norm.gguf", nan_norm, "tensor output_norm.weight holds NaN at index 0"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, &data).unwrap();
        let out = llmeval(&["engine", "info", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let e = stderr(&out);
        assert!(e.contains(name) && e.contains(want) && !e.contains("panicked"), "{name}: {e}");
    }
    // A chat template that does not parse: the error names the file and the metadata key.
    let mut bad_template = bytes.clone();
    let key = b"tokenizer.chat_template";
    let at = bad_template.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 12;
    assert_eq!(&bad_template[at..at + 6], b"{% for");
    bad_template[at..at + 6].copy_from_slice(b"{% fxr");
    let p = dir.path().join("template.gguf");
    std::fs::write(&p, &bad_template).unwrap();
    let out = llmeval(&["engine", "generate", "--model", p.to_str().unwrap(), "--chat", "--prompt", "Hi", "--max-tokens", "1", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("template.gguf (metadata key tokenizer.chat_template): chat template: bad template"), "{e}");
    // The same checks on a Hugging Face config.json (they come before the weights are opened).
    for (key, value) in [("num_hidden_layers", "0"), ("rms_norm_eps", "-0.5"), ("max_position_embeddings", "1"), ("head_dim", "63")] {
        let hf = dir.path().join(format!("hf-{key}"));
        std::fs::create_dir_all(&hf).unwrap();
        let config = format!(r#"{{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "{key}": {value}}}"#);
        std::fs::write(hf.join("config.json"), config).unwrap();
        let out = llmeval(&["engine", "info", hf.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{key}");
        let e = stderr(&out);
        assert!(e.contains("config.json") && e.contains(&format!("{key} is {value}")), "{key}: {e}");
    }
    // NaN in token 0's row of the tied embedding / LM head: every log-probability is NaN.
    let mut nan_row = bytes.clone();
    let at = tensor_at("token_embd.weight");
    nan_row[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    std::fs::write(dir.path().join("nanrow.gguf"), &nan_row).unwrap();
    dir.write("mc.jsonl", "{\"q\": \"Two plus two is\", \"choices\": [\" four\", \" five\"], \"label\": 0}\n");
    let suite = dir.write(
        "suite.toml",
        "name = \"damaged\"\n[[model]]\nname = \"nan\"\nengine = \"builtin\"\npath = \"nanrow.gguf\"\ndevice = \"cpu\"\n\
         [[task]]\nname = \"mc\"\nkind = \"multiple-choice\"\ndata = \"mc.jsonl\"\nprompt = \"{{ q }}\"\nchoices = \"choices\"\ngold = \"label\"\nmetrics = [\"acc\"]\n\
         [[task]]\nname = \"gen\"\nkind = \"generate\"\ndata = \"mc.jsonl\"\nprompt = \"{{ q }}\"\ntarget = \"four\"\nmax-tokens = 3\nmetrics = [\"exact-match\"]\n",
    );
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    let errors = sample_errors(&dir.db());
    assert!(errors.iter().any(|e| e.contains("nanrow.gguf") && e.contains("log-probability of NaN")), "{errors:?} {}", stderr(&out));
    let v = json_out(&out);
    let r = result(&v, "nan", "mc", "acc");
    assert_eq!(r["errors"], 1, "{r}");
    assert!(r["value"].is_null(), "a NaN score was stored: {r}");
    assert!(errors.iter().any(|e| e.contains("nanrow.gguf: the logit of token 0 is NaN")), "{errors:?}");
    assert_eq!(result(&v, "nan", "gen", "exact-match")["errors"], 1);
    // Generation: a NaN logit never wins a comparison, so greedy choices would silently avoid
    // (or, as the first index, keep) it; the request is an error that says why.
    let out = llmeval(&["engine", "generate", "--model", dir.path().join("nanrow.gguf").to_str().unwrap(), "--prompt", "Hi", "--max-tokens", "3", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nanrow.gguf: the logit of token 0 is NaN after 0 generated token(s): the weights are damaged"), "{}", stderr(&out));
}

/// lm-eval's `_encode_pair` on the built-in engine: "Answer: " + "Paris" scores as
/// "Answer:" + " Paris", exactly as the prompt without the space and the default delimiter.
#[test]
fn trailing_prompt_whitespace_is_scored_with_the_continuation() {
    let dir = TempDir::new("encode-pair");
    dir.write("mc.jsonl", "{\"q\": \"What is the capital of France?\", \"choices\": [\"Paris\", \"Rome\"], \"label\": 0}\n");
    let task = |name: &str, prompt: &str, delimiter: &str| {
        format!("[[task]]\nname = \"{name}\"\nkind = \"multiple-choice\"\ndata = \"mc.jsonl\"\nprompt = \"{prompt}\"\ntarget-delimiter = \"{delimiter}\"\nchoices = \"choices\"\ngold = \"label\"\nmetrics = [\"acc\"]\n")
    };
    let suite = dir.write(
        "suite.toml",
        &format!(
            "name = \"pair\"\n[[model]]\nname = \"m\"\nengine = \"builtin\"\npath = \"{}\"\ndevice = \"cpu\"\n{}{}",
            model_path().display(),
            task("spaced", "Question: {{ q }}\\nAnswer: ", ""),
            task("plain", "Question: {{ q }}\\nAnswer:", " ")
        ),
    );
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let evidence = |task: &str| -> String { conn.query_row("SELECT evidence FROM samples WHERE task = ?1", [task], |r| r.get(0)).unwrap() };
    assert_eq!(evidence("spaced"), evidence("plain"));
}

#[test]
fn quickstart_suite_runs_offline_on_the_default_model() {
    model_path();
    let dir = TempDir::new("quickstart");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/quickstart.toml");
    let out = llmeval(&["run", suite, "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    for (task, metric) in [("facts", "acc"), ("facts", "acc-norm"), ("addition", "exact-match"), ("copy", "bleu"), ("copy", "rougeL")] {
        let r = result(&v, "smollm2-135m", task, metric);
        assert_eq!(r["errors"], 0);
        let x = r["value"].as_f64().unwrap();
        assert!(x.is_finite() && x >= 0.0, "{task}/{metric}: {r}");
    }
    // device = "auto" without a GPU: the CPU, and the run's notes say why
    if llmeval::engine::device::probe_cuda(0).is_err() {
        let show = llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--json"]);
        let show = json_out(&show);
        let notes = show["notes"].as_array().unwrap();
        assert!(notes.iter().any(|n| n.as_str().unwrap().starts_with("smollm2-135m: device auto: running on the CPU (")), "{notes:?}");
    }
    // Every interval is ordered (a clipped bootstrap bound once crossed the other: "± -0.0000").
    for r in v["results"].as_array().unwrap() {
        if let Some(ci) = r["ci95"].as_array() {
            assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap(), "{r}");
        }
    }
    // The 135M model knows some facts: above the 25% chance level of four choices.
    assert!(result(&v, "smollm2-135m", "facts", "acc")["value"].as_f64().unwrap() > 0.25);
    // Copying a sentence is easy even for a small model.
    assert!(result(&v, "smollm2-135m", "copy", "bleu")["value"].as_f64().unwrap() > 30.0);
}

/// Writes a Hugging Face copy of the default model: f32 safetensors (Q/K rows un-permuted back to
/// the half-split rotary layout), config.json, and a tokenizer.json with the same vocabulary,
/// merges, special tokens and pre-tokenizer (digits split, then byte-level).
fn write_hf_copy(dir: &std::path::Path) {
    use llmeval::engine::gguf::{Gguf, MetaValue};
    let g = Gguf::open(&model_path()).unwrap();
    let (heads, kv_heads, hd) = (9usize, 3usize, 64usize);
    let unpermute = |rows: Vec<f32>, n_heads: usize, cols: usize| -> Vec<f32> {
        let mut out = vec![0f32; rows.len()];
        for h in 0..n_heads {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let src = h * hd + 2 * i + j;
                    let dst = h * hd + j * (hd / 2) + i;
                    out[dst * cols..(dst + 1) * cols].copy_from_slice(&rows[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for t in &g.tensors {
        let n: usize = t.dims.iter().product();
        let mut v = vec![0f32; n];
        llmeval::engine::quant::dequantize(t.ty, g.data(t), &mut v).unwrap();
        let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
        let cols = t.dims[0];
        let name = t.name.clone();
        let hf = if name == "token_embd.weight" {
            "model.embed_tokens.weight".to_string()
        } else if name == "output_norm.weight" {
            "model.norm.weight".to_string()
        } else {
            let rest = name.strip_prefix("blk.").unwrap();
            let (l, part) = rest.split_once('.').unwrap();
            let p = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => panic!("unexpected tensor {other}"),
            };
            format!("model.layers.{l}.{p}")
        };
        if name.ends_with("attn_q.weight") {
            v = unpermute(v, heads, cols);
        } else if name.ends_with("attn_k.weight") {
            v = unpermute(v, kv_heads, cols);
        }
        tensors.push((hf, shape, v));
    }
    // safetensors: header length, JSON header, little-endian f32 data.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, v) in &tensors {
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + v.len() * 4]}));
        offset += v.len() * 4;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors")).unwrap());
    use std::io::Write;
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    for (_, _, v) in &tensors {
        for x in v {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    f.flush().unwrap();
    let meta = |k: &str| g.meta(k).unwrap().clone();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": meta("llama.attention.layer_norm_rms_epsilon").as_f64().unwrap(),
        "rope_theta": 100000.0, "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let strings = |k: &str| -> Vec<String> { g.meta(k).and_then(MetaValue::as_array).unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    let tokens = strings("tokenizer.ggml.tokens");
    let types: Vec<i64> = g.meta("tokenizer.ggml.token_type").and_then(MetaValue::as_array).unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == 3 || types[*i] == 4)
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": strings("tokenizer.ggml.merges")},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let chat = g.meta("tokenizer.chat_template").and_then(MetaValue::as_str).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::json!({"chat_template": chat, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false}).to_string()).unwrap();
}

#[test]
fn hugging_face_copy_gives_the_same_logits_as_the_gguf() {
    let dir = TempDir::new("hf-copy");
    write_hf_copy(dir.path());
    let mut hf = Engine::load(dir.path(), 2).unwrap();
    let mut gg = Engine::load(&model_path(), 2).unwrap();
    hf.model.exact = true;
    gg.model.exact = true;
    assert_eq!(hf.info.format, "Hugging Face safetensors");
    let r = reference();
    for case in r["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(hf.encode(text), ids(&case["ids"]), "tokenizer.json tokens of {text:?}");
    }
    let reqs: Vec<ScoreRequest> = r["score"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ScoreRequest { context: gg.encode(c["context"].as_str().unwrap()), continuation: gg.encode(c["continuation"].as_str().unwrap()) })
        .collect();
    let mut a = vec![vec![]; reqs.len()];
    let mut b = vec![vec![]; reqs.len()];
    gg.score_batch(&reqs, &mut |i, s| a[i] = s.token_logprobs);
    hf.score_batch(&reqs, &mut |i, s| b[i] = s.token_logprobs);
    let mut worst = 0f64;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        worst = worst.max((x - y).abs());
    }
    assert!(worst < 1e-4, "GGUF and safetensors copies differ by {worst} nats");
    // And greedy generation is the same text.
    let p = gg.encode("The capital of France is");
    let o = GenOptions { max_tokens: 12, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: vec![] };
    assert_eq!(gg.generate(&p, &o).tokens, hf.generate(&p, &o).tokens);
}

/// `--device`: `auto` falls back to the CPU with one line on stderr when no GPU is usable; `cuda`
/// without one and malformed names are errors (exit 2) that say what was asked and what is missing.
#[test]
fn device_flag_selects_falls_back_and_refuses() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let score = |device: &str| llmeval(&["engine", "score", "--model", m, "--device", device, "--context", "The capital of France is", "--continuation", " Paris", "--json"]);
    let cpu = score("cpu");
    assert_eq!(cpu.status.code(), Some(0), "{}", stderr(&cpu));
    assert_eq!(stderr(&cpu), "", "the CPU was asked for: nothing to say");
    match llmeval::engine::device::probe_cuda(0) {
        Err(reason) => {
            let auto = score("auto");
            assert_eq!(auto.status.code(), Some(0), "{}", stderr(&auto));
            assert_eq!(stderr(&auto), format!("{m}: device auto: running on the CPU ({reason})\n"));
            assert_eq!(json_out(&auto)["logprob"], json_out(&cpu)["logprob"]);
            let cuda = score("cuda");
            assert_eq!(cuda.status.code(), Some(2));
            assert_eq!(stderr(&cuda), format!("error: model {m}: device cuda:0: {reason}\n"));
        }
        Ok(gpu) => eprintln!("a GPU is present ({}): the fallback is not exercised here; benches/gpu-check.sh checks the GPU path", gpu.name),
    }
    let far = score("cuda:7");
    assert_eq!(far.status.code(), Some(2), "{}", stderr(&far));
    assert!(stderr(&far).starts_with(&format!("error: model {m}: device cuda:7: ")) && !stderr(&far).contains("panicked"), "{}", stderr(&far));
    for bad in ["gpu", "cuda:x"] {
        let out = score(bad);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(stderr(&out), format!("error: model {m}: unknown device \"{bad}\"; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"\n"));
    }
}

/// `engine bench --profile` times GPU launches: on the CPU it is an error that says so (exit 2).
#[test]
fn bench_profile_needs_a_gpu() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let out = llmeval(&["engine", "bench", "--model", m, "--device", "cpu", "--profile"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("error: --profile times GPU launches, and {m} runs on cpu: add --device cuda\n"));
}

/// `engine bench --prompt-tokens` must leave room for the 128 decoded tokens in the model's
/// context; past that it is a usage error naming the limit (exit 2), and 0 is refused by clap.
#[test]
fn bench_prompt_must_fit_the_context() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let out = llmeval(&["engine", "bench", "--model", m, "--device", "cpu", "--prompt-tokens", "8065"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("error: --prompt-tokens 8065 and 128 decoded tokens do not fit in the 8192-token context of {m}: give at most 8064\n")
    );
    let zero = llmeval(&["engine", "bench", "--model", m, "--device", "cpu", "--prompt-tokens", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(stderr(&zero).contains("--prompt-tokens"), "{}", stderr(&zero));
}
