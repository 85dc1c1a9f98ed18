//! The built-in engine behind the [`Model`] trait: tokenization, chat formatting and lm-eval's
//! request semantics live here; the engine itself only sees token ids.

use super::{Capabilities, Context, GenRequest, Generation, Loglikelihood, LoglikelihoodRequest, Model, Outcome, RollingRequest, Sink};
use crate::engine::session::{GenOptions, ScoreRequest, ScoreResult};
use crate::engine::device::Device;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::suite::ModelConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct BuiltinModel {
    engine: Engine,
    /// For the run's notes: why `device = "auto"` stayed on the CPU, or that the GPU's scores may
    /// depend on the batch.
    note: Option<String>,
    path: PathBuf,
    identity: Value,
    /// System message put before every conversation (`system-prompt`).
    system_prompt: Option<String>,
}

impl BuiltinModel {
    /// Loads the model a `[[model]]` table names (`path` relative to the suite's directory).
    pub fn new(cfg: &ModelConfig, suite_dir: &Path) -> Result<Self> {
        let err = |message: String| Error::Model { model: cfg.name.clone(), message };
        let rel = cfg.path.as_deref().ok_or_else(|| err("engine = \"builtin\" needs `path` (a GGUF file or a Hugging Face directory)".into()))?;
        let mut path = suite_dir.join(rel);
        if !path.exists() && Path::new(rel).exists() {
            path = PathBuf::from(rel); // relative to the working directory, as a fallback
        }
        let device: Device = cfg.device.as_ref().map_or("auto", |d| d.get_ref().as_str()).parse().map_err(|e| err(format!("{e}")))?;
        let threads = cfg.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut engine = Engine::load(&path, threads).map_err(|e| err(format!("{e}")))?;
        let note = engine.place(device).map_err(|e| err(format!("{e}")))?.map(|n| format!("{}: {n}", cfg.name));
        let identity = json!({
            "engine": "builtin",
            "path": std::fs::canonicalize(&path).unwrap_or(path.clone()),
            "files": file_stamps(&path),
            "llmeval": env!("CARGO_PKG_VERSION"),
            "system-prompt": cfg.system_prompt,
        });
        let mut identity = identity;
        if engine.gpu.is_some() {
            // GPU arithmetic differs from the CPU's in the last digits: its answers are cached apart
            identity["backend"] = json!(format!("cuda {}", engine.gpu.as_ref().map_or("", |g| g.prec.name())));
        }
        Ok(BuiltinModel { engine, note, path, identity, system_prompt: cfg.system_prompt.clone() })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Why `device = "auto"` stayed on the CPU (no driver, no GPU), or that the GPU's scores may
    /// depend on the batch.
    pub fn device_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Log-likelihood requests scored token by token: each request's token ids (the context with
    /// BOS where the model adds it, or lm-eval's prefix token when empty, and the continuation,
    /// each tokenized on its own) with the engine's result. [`Model::loglikelihood`] reports the
    /// totals of the same.
    pub fn score_detailed(&self, requests: &[LoglikelihoodRequest], sink: &mut dyn FnMut(usize, &ScoreRequest, Outcome<ScoreResult>)) {
        let all: Vec<ScoreRequest> = requests
            .iter()
            .map(|r| {
                let mut context = self.with_bos(self.engine.encode(&r.context));
                if context.is_empty() {
                    context = vec![self.prefix_token()];
                }
                ScoreRequest { context, continuation: self.engine.encode(&r.continuation) }
            })
            .collect();
        let failed = |e: String| Outcome { result: Err(format!("{}: {e}", self.path.display())), latency_ms: 0.0, attempts: 1 };
        // a request that does not fit errors its own item, not the others
        let mut done = vec![false; all.len()];
        for (i, r) in all.iter().enumerate() {
            if let Err(e) = self.engine.fits(r) {
                done[i] = true;
                sink(i, r, failed(e.to_string()));
            }
        }
        let fits: Vec<usize> = (0..all.len()).filter(|&i| !done[i]).collect();
        // the requests as they are when all fit (the usual case), else a copy of those that do
        let batch: std::borrow::Cow<[ScoreRequest]> = if fits.len() == all.len() { (&all[..]).into() } else { fits.iter().map(|&i| all[i].clone()).collect::<Vec<_>>().into() };
        let mut last = Instant::now();
        let result = self.engine.score(&batch, &mut |j, s| {
            let i = fits[j];
            let now = Instant::now();
            let latency_ms = now.duration_since(last).as_secs_f64() * 1e3;
            last = now;
            done[i] = true;
            let result = self.finite(s.logprob).map(|_| s);
            sink(i, &all[i], Outcome { result, latency_ms, attempts: 1 });
        });
        if let Err(e) = result {
            for i in (0..all.len()).filter(|&i| !done[i]) {
                sink(i, &all[i], failed(e.to_string()));
            }
        }
    }

    /// Token ids of a prompt: raw text (BOS first when the model asks for it), or a conversation
    /// through the model's chat template.
    fn prompt_ids(&self, context: &Context) -> std::result::Result<Vec<u32>, String> {
        match context {
            Context::Text(t) => Ok(self.with_bos(self.engine.encode(t))),
            Context::Chat(msgs) => {
                let system = self.system_prompt.iter().filter(|_| msgs.first().is_none_or(|m| m.role != "system")).map(|s| ("system".to_string(), s.clone()));
                let pairs: Vec<(String, String)> = system.chain(msgs.iter().map(|m| (m.role.clone(), m.content.clone()))).collect();
                let text = self.engine.render_chat(&pairs).map_err(|e| e.to_string())?;
                Ok(self.engine.encode(&text))
            }
        }
    }

    fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if self.engine.add_bos
            && let Some(b) = self.engine.bos
        {
            ids.insert(0, b);
        }
        ids
    }

    /// A log-probability, or an error when it is NaN or infinite: weights with NaN or infinity
    /// in them, which would otherwise be stored as a score.
    fn finite(&self, logprob: f64) -> std::result::Result<f64, String> {
        if logprob.is_finite() {
            return Ok(logprob);
        }
        Err(format!("{}: the model gave a log-probability of {logprob}; its weights hold NaN or infinity, or overflow in this precision", self.path.display()))
    }

    /// The token lm-eval puts before an empty context or a rolling text.
    fn prefix_token(&self) -> u32 {
        self.engine.eos.first().copied().or(self.engine.bos).unwrap_or(0)
    }
}

/// Size and modification time of the model's file, or of every file in a Hugging Face
/// directory (a directory's own times do not change when a file in it is rewritten): cached
/// answers of a model replaced in place are not served.
fn file_stamps(path: &Path) -> Value {
    let stamp = |p: &Path| {
        let meta = std::fs::metadata(p).ok();
        json!([meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64)])
    };
    if !path.is_dir() {
        return stamp(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    Value::Object(files.iter().map(|f| (f.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()), stamp(f))).collect())
}

impl Model for BuiltinModel {
    fn identity(&self) -> Value {
        self.identity.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { loglikelihood: true }
    }

    fn notes(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn generate(&self, requests: &[GenRequest], sink: Sink<'_, Generation>) {
        let start = Instant::now();
        let mut prompts = Vec::new();
        let mut opts = Vec::new();
        let mut index = Vec::new(); // request of each prompt
        for (i, r) in requests.iter().enumerate() {
            match self.prompt_ids(&r.context) {
                Ok(ids) if ids.is_empty() => sink(i, Outcome { result: Err("the prompt is empty (and the model adds no BOS token): there is nothing to continue".into()), latency_ms: 0.0, attempts: 1 }),
                Ok(ids) => {
                    prompts.push(ids);
                    opts.push(GenOptions { max_tokens: r.max_tokens as usize, temperature: r.temperature, top_k: None, top_p: r.top_p, seed: r.seed.unwrap_or(0), stop: r.stop.clone() });
                    index.push(i);
                }
                Err(e) => sink(i, Outcome { result: Err(e), latency_ms: 0.0, attempts: 1 }),
            }
        }
        let mut done = vec![false; prompts.len()];
        let mut last = start;
        let result = self.engine.generate_all(&prompts, &opts, &mut |j, g| {
            let now = Instant::now();
            let latency_ms = now.duration_since(last).as_secs_f64() * 1e3;
            last = now;
            done[j] = true;
            if let Some(e) = g.error {
                return sink(index[j], Outcome { result: Err(format!("{}: {e}", self.path.display())), latency_ms, attempts: 1 });
            }
            sink(index[j], Outcome { result: Ok(Generation { text: g.text, prompt_tokens: Some(prompts[j].len() as u64), completion_tokens: Some(g.tokens.len() as u64), finish_reason: Some(g.finish_reason.into()) }), latency_ms, attempts: 1 });
        });
        if let Err(e) = result {
            for (j, _) in done.iter().enumerate().filter(|(_, d)| !**d) {
                sink(index[j], Outcome { result: Err(format!("{}: {e}", self.path.display())), latency_ms: 0.0, attempts: 1 });
            }
        }
    }

    fn loglikelihood(&self, requests: &[LoglikelihoodRequest], sink: Sink<'_, Loglikelihood>) {
        self.score_detailed(requests, &mut |i, req, o| {
            let result = o.result.map(|s| Loglikelihood { logprob: s.logprob, is_greedy: Some(s.is_greedy), tokens: req.continuation.len() as u64 });
            sink(i, Outcome { result, latency_ms: o.latency_ms, attempts: o.attempts });
        });
    }

    fn loglikelihood_rolling(&self, requests: &[RollingRequest], sink: Sink<'_, Loglikelihood>) {
        let prefix = self.prefix_token();
        for (i, r) in requests.iter().enumerate() {
            let start = Instant::now();
            let windows = self.engine.rolling_windows(&self.engine.encode(&r.text), prefix);
            let mut total = Loglikelihood { logprob: 0.0, is_greedy: Some(true), tokens: 0 };
            let result = self.engine.score(&windows, &mut |j, s| {
                total.logprob += s.logprob;
                total.is_greedy = total.is_greedy.map(|g| g && s.is_greedy);
                total.tokens += windows[j].continuation.len() as u64;
            });
            let result = result.map_err(|e| format!("{}: {e}", self.path.display())).and_then(|()| self.finite(total.logprob).map(|_| total));
            sink(i, Outcome { result, latency_ms: start.elapsed().as_secs_f64() * 1e3, attempts: 1 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file_stamps;

    #[test]
    fn a_file_rewritten_in_a_model_directory_changes_the_identity() {
        let dir = std::env::temp_dir().join(format!("llmeval-stamps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"12345678").unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let before = file_stamps(&dir);
        assert_eq!(before.as_object().unwrap().len(), 2, "{before}");
        std::fs::write(dir.join("model.safetensors"), b"1234567890").unwrap();
        assert_ne!(file_stamps(&dir), before);
        assert_eq!(file_stamps(&dir.join("config.json"))[0], 2, "a file: its size and time");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
