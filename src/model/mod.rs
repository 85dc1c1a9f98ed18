//! ③ The model boundary: one batched, synchronous trait shaped like lm-evaluation-harness's `LM`.
//!
//! A backend receives a whole batch and reports each result through a callback as soon as it is
//! ready, so the runner can store it at once (that is what makes `--resume` lose nothing). Async,
//! if a backend needs it, stays inside the backend.

pub mod builtin;
pub mod remote;

use serde::{Deserialize, Serialize};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What to generate from: raw text, or a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Context {
    /// A prompt string; chat APIs send it as a single user message.
    Text(String),
    /// A conversation (multi-turn tasks and judges).
    Chat(Vec<Message>),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    pub context: Context,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl GenRequest {
    /// Whether the answer is reproducible and may be served from the cache.
    pub fn deterministic(&self) -> bool {
        self.temperature == 0.0 || self.seed.is_some()
    }
}

/// A generated answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
}

/// Log-likelihood of `continuation` given `context` (lm-eval's `loglikelihood`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoglikelihoodRequest {
    pub context: String,
    pub continuation: String,
}

/// Sum of the continuation tokens' log-probabilities, and whether greedy decoding would have
/// produced the continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loglikelihood {
    pub logprob: f64,
    /// `None` when it cannot be told (a server that gave no `top_logprobs`).
    pub is_greedy: Option<bool>,
    /// Number of continuation tokens scored.
    pub tokens: u64,
}

/// Rolling log-likelihood of a whole text (lm-eval's `loglikelihood_rolling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingRequest {
    pub text: String,
}

/// The result of one request, with what it cost.
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    /// The answer, or the error text after the last attempt.
    pub result: Result<T, String>,
    /// Wall time of the successful (or last) attempt, in milliseconds.
    pub latency_ms: f64,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
}

/// What a backend can do.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Whether `loglikelihood` and `loglikelihood_rolling` are available. When not, multiple
    /// choice falls back to generation and letter extraction.
    pub loglikelihood: bool,
}

/// Callback receiving `(index into the batch, outcome)`, called once per request, in any order.
pub type Sink<'a, T> = &'a mut dyn FnMut(usize, Outcome<T>);

/// A model under evaluation (or a judge).
pub trait Model: Send + Sync {
    /// Identity used in cache keys: everything that changes the answers, never secrets.
    fn identity(&self) -> serde_json::Value;
    fn capabilities(&self) -> Capabilities;
    fn generate(&self, requests: &[GenRequest], sink: Sink<'_, Generation>);
    fn loglikelihood(&self, requests: &[LoglikelihoodRequest], sink: Sink<'_, Loglikelihood>);
    /// The log-probability of every token of the text; `is_greedy`/`tokens` as for
    /// `loglikelihood`.
    fn loglikelihood_rolling(&self, requests: &[RollingRequest], sink: Sink<'_, Loglikelihood>);
    /// Facts about how the model runs that belong in the run's notes (a device fallback).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Why the model can answer no more requests (an endpoint that cannot be reached, a key it
    /// rejects). The requests it did not answer stay unasked: the run stops with this reason, and
    /// `--resume` asks them once it is fixed.
    fn halted(&self) -> Option<String> {
        None
    }
}

/// Builds the backend a suite's `[[model]]` table describes (`suite_dir` resolves paths).
pub fn from_config(cfg: &crate::suite::ModelConfig, suite_dir: &std::path::Path) -> crate::Result<Box<dyn Model>> {
    match cfg.engine {
        crate::suite::Engine::Openai => Ok(Box::new(remote::RemoteModel::new(cfg)?)),
        crate::suite::Engine::Builtin => Ok(Box::new(builtin::BuiltinModel::new(cfg, suite_dir)?)),
    }
}
