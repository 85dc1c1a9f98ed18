//! The OpenAI-compatible backend: the only async code in llmeval.
//!
//! It owns a tokio runtime and runs `concurrency` workers that pull requests from one queue, so
//! the number in flight can never exceed the cap, whatever the batch size. Each worker retries
//! transient failures (429 with `Retry-After`, 408/409/5xx, timeouts, dropped connections,
//! non-JSON bodies) with exponential backoff and jitter; a request that still fails becomes an
//! errored outcome carrying the error text, never a wrong answer.
//!
//! An endpoint that cannot serve anyone (nothing listening, a hung or failing server, a rejected
//! key) is not worth asking a thousand times: a [`Breaker`] shared by the workers halts the model
//! once enough requests in a row have used every retry with no answer in between, or at once on
//! 401/403. The requests it leaves unasked are never reported, so the run stops with the reason
//! and `--resume` asks them later.

use super::{Capabilities, Context, GenRequest, Generation, Loglikelihood, LoglikelihoodRequest, Model, Outcome, RollingRequest, Sink};
use crate::error::{Error, Result};
use crate::suite::{Api, ModelConfig};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reads a response body into a result, or says why it cannot.
type Parse<T> = dyn Fn(&Value) -> std::result::Result<T, String> + Send + Sync;

/// One HTTP request to make and how to read its answer.
struct Job<T> {
    path: &'static str,
    body: Value,
    /// Estimated tokens, for `tokens-per-minute`.
    tokens: f64,
    parse: Box<Parse<T>>,
}

/// A response reader that is a plain function.
type ParseFn<T> = fn(&Value) -> std::result::Result<T, String>;

/// The jobs not yet taken by a worker, with their indices.
type Queue<T> = Arc<Mutex<VecDeque<(usize, Job<T>)>>>;

pub struct RemoteModel {
    cfg: ModelConfig,
    api_key: Option<String>,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    limiter: Arc<Limiter>,
    breaker: Arc<Breaker>,
}

impl RemoteModel {
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        let err = |message: String| Error::Model { model: cfg.name.clone(), message };
        let api_key = match &cfg.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => return Err(err(format!("api-key-env names {var}, but that environment variable is not set; export it or remove api-key-env"))),
            },
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start the async runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("llmeval/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        let limiter = Arc::new(Limiter::new(cfg.requests_per_minute, cfg.tokens_per_minute));
        let breaker = Arc::new(Breaker::new(cfg.concurrency));
        Ok(RemoteModel { cfg: cfg.clone(), api_key, runtime, client, limiter, breaker })
    }

    fn with_extra(&self, mut body: Value) -> Value {
        if let (Some(extra), Value::Object(map)) = (&self.cfg.extra_body, &mut body)
            && let Ok(Value::Object(extra)) = serde_json::to_value(extra)
        {
            map.extend(extra);
        }
        body
    }

    fn messages(&self, context: &Context) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(sys) = &self.cfg.system_prompt {
            out.push(json!({"role": "system", "content": sys}));
        }
        match context {
            Context::Text(t) => out.push(json!({"role": "user", "content": t})),
            Context::Chat(msgs) => out.extend(msgs.iter().map(|m| json!({"role": m.role, "content": m.content}))),
        }
        out
    }

    /// Runs the jobs with `concurrency` workers and reports each outcome to `sink` as it arrives.
    fn execute<T: Send + 'static>(&self, jobs: Vec<Job<T>>, sink: Sink<'_, T>) {
        if jobs.is_empty() {
            return;
        }
        let queue: Queue<T> = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Outcome<T>)>();
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            api_key: self.api_key.clone(),
            base: self.cfg.base_url.trim_end_matches('/').to_string(),
            max_retries: self.cfg.max_retries,
            retry_initial: self.cfg.retry_initial_s,
            timeout_s: self.cfg.timeout_s,
            limiter: self.limiter.clone(),
            breaker: self.breaker.clone(),
        });
        let workers = self.cfg.concurrency.min(queue.lock().expect("queue lock").len());
        self.runtime.block_on(async {
            for w in 0..workers {
                let (queue, tx, shared) = (queue.clone(), tx.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut rng = Jitter::new(w as u64);
                    while shared.breaker.halted().is_none() {
                        let next = queue.lock().expect("queue lock").pop_front();
                        let Some((i, job)) = next else { break };
                        let Some(outcome) = shared.call(&job, &mut rng).await else { break };
                        if tx.send((i, outcome)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            while let Some((i, outcome)) = rx.recv().await {
                sink(i, outcome);
            }
        });
    }
}

struct Shared {
    client: reqwest::Client,
    api_key: Option<String>,
    base: String,
    max_retries: u32,
    retry_initial: f64,
    timeout_s: f64,
    limiter: Arc<Limiter>,
    breaker: Arc<Breaker>,
}

/// Why an attempt failed.
enum Failure {
    /// Worth another attempt; optionally after the server's `Retry-After`.
    Transient(String, Option<Duration>),
    /// Will fail again for this request (bad request, unsupported feature); the server is up.
    Permanent(String),
    /// Will fail for every request: a rejected key (401, 403), or a 404 (wrong `base-url` or
    /// `model`, flagged `true`) before the endpoint has answered anything.
    Rejected(String, bool),
}

/// Decides when an endpoint is down for every request, not just failing some.
///
/// Requests that give up (every retry used, no answer) are counted in a row; any answer, even a
/// permanent error, shows the server is up and resets the count. `concurrency` give-ups in a row
/// (at least [`Breaker::MIN_STREAK`]) mean that every worker met the same wall for a whole retry
/// cycle while nothing else got through.
struct Breaker {
    streak_to_halt: usize,
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    streak: usize,
    answered: bool,
    halt: Option<String>,
}

impl Breaker {
    /// Give-ups in a row that halt a model whatever its concurrency: one item a server cannot
    /// answer (a prompt that crashes it) must not stop a run.
    const MIN_STREAK: usize = 3;

    fn new(concurrency: usize) -> Self {
        Breaker { streak_to_halt: concurrency.max(Self::MIN_STREAK), state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the endpoint can take no more requests, once it is known.
    fn halted(&self) -> Option<String> {
        self.state().halt.clone()
    }

    /// The server answered (a result, or an error that is the request's own).
    fn answered(&self) {
        let mut s = self.state();
        s.streak = 0;
        s.answered = true;
    }

    /// A request used every retry; true when that halts the endpoint.
    fn gave_up(&self, base: &str, message: &str) -> bool {
        let mut s = self.state();
        s.streak += 1;
        if s.streak >= self.streak_to_halt && s.halt.is_none() {
            s.halt = Some(format!(
                "the endpoint {base} answered none of the last {} requests, each retried until it gave up, so llmeval stopped asking it (the last: {message}); check that the server is up and `base-url` is right",
                s.streak
            ));
        }
        s.halt.is_some()
    }

    /// A request was rejected as every request will be; true when that halts the endpoint (a 404
    /// after answers is one request's problem).
    fn rejected(&self, base: &str, message: &str, is_404: bool) -> bool {
        let mut s = self.state();
        if is_404 && s.answered {
            return false;
        }
        if s.halt.is_none() {
            s.halt = Some(format!("the endpoint {base} rejects every request, so llmeval stopped asking it: {message}"));
        }
        true
    }
}

/// The longest `Retry-After` llmeval waits.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl Shared {
    /// Makes the request, retrying transient failures; `None` when the endpoint halted instead
    /// (the request stays unasked).
    async fn call<T>(&self, job: &Job<T>, rng: &mut Jitter) -> Option<Outcome<T>> {
        let mut attempts = 0;
        loop {
            if self.breaker.halted().is_some() {
                return None;
            }
            attempts += 1;
            self.limiter.acquire(job.tokens).await;
            let start = Instant::now();
            let result = self.attempt(job).await;
            let latency_ms = start.elapsed().as_secs_f64() * 1e3;
            let errored = |message: String| Some(Outcome { result: Err(message), latency_ms, attempts });
            let (message, retry_after) = match result {
                Ok(v) => {
                    self.breaker.answered();
                    return Some(Outcome { result: Ok(v), latency_ms, attempts });
                }
                Err(Failure::Permanent(m)) => {
                    self.breaker.answered();
                    return errored(m);
                }
                Err(Failure::Rejected(m, is_404)) => {
                    return if self.breaker.rejected(&self.base, &m, is_404) { None } else { errored(m) };
                }
                Err(Failure::Transient(m, ra)) => (m, ra),
            };
            let give_up = |message: String| if self.breaker.gave_up(&self.base, &message) { None } else { errored(message) };
            if attempts > self.max_retries {
                return give_up(format!("{message} (gave up after {attempts} attempts)"));
            }
            let backoff = (self.retry_initial * 2f64.powi(attempts as i32 - 1)).min(60.0);
            let delay = match retry_after {
                // a server that asks for more than this is not worth waiting for here: the item
                // errors now, and a later run (or --resume) retries it
                Some(d) if d > MAX_RETRY_AFTER => {
                    return give_up(format!("{message} (the server asked to wait {:.0} s before retrying, more than llmeval waits: {} s)", d.as_secs_f64(), MAX_RETRY_AFTER.as_secs()));
                }
                Some(d) => d,
                // "Equal jitter": half the backoff fixed, half random.
                None => Duration::from_secs_f64(backoff * (0.5 + 0.5 * rng.next_f64())),
            };
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T>(&self, job: &Job<T>) -> std::result::Result<T, Failure> {
        let mut req = self.client.post(format!("{}{}", self.base, job.path)).json(&job.body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<f64>().ok()).map(|ms| ms / 1e3)
            .or_else(|| resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<f64>().ok()))
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            let detail = error_detail(&bytes);
            let hint = match status.as_u16() {
                401 | 403 => " (check the API key: the model's `api-key-env` names the environment variable that holds it)",
                404 => " (check the model's `base-url`, which ends before /chat/completions, and `model`)",
                400 if detail.contains("max_completion_tokens") && job.body.get("max_tokens").is_some() => {
                    " (this model takes its token limit as `max_completion_tokens`: set max-tokens-field = \"max_completion_tokens\" on the model)"
                }
                _ => "",
            };
            let msg = format!("HTTP {}: {detail}{hint}", status.as_u16());
            return Err(match status.as_u16() {
                408 | 409 | 429 | 500..=599 => Failure::Transient(msg, retry_after),
                401 | 403 | 404 => Failure::Rejected(msg, status.as_u16() == 404),
                _ => Failure::Permanent(msg),
            });
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            let what = match std::str::from_utf8(&bytes) {
                Err(_) if bytes.starts_with(&[0x1f, 0x8b]) => "a gzip-compressed body, which llmeval did not ask for (the server or a proxy ignores Accept-Encoding)".into(),
                Err(e) => format!("a body that is not valid UTF-8 (at byte {})", e.valid_up_to()),
                Ok(_) => "a body that is not JSON".into(),
            };
            Failure::Transient(format!("HTTP {} with {what}: {}", status.as_u16(), snippet(&bytes)), retry_after)
        })?;
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            return Err(Failure::Transient(format!("error in response body: {}", error_detail(err.to_string().as_bytes())), retry_after));
        }
        (job.parse)(&value).map_err(Failure::Permanent)
    }

    fn transport(&self, e: reqwest::Error) -> Failure {
        let msg = if e.is_timeout() {
            format!("timed out after {} s", self.timeout_s)
        } else if e.is_connect() {
            format!("cannot connect: {}", chain(&e))
        } else {
            format!("connection failed: {}", chain(&e))
        };
        Failure::Transient(msg, None)
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.chars().count() > 200 { format!("{}…", s.chars().take(200).collect::<String>()) } else { s.to_string() }
}

/// The `error.message` of an OpenAI error body, else the start of the body.
fn error_detail(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes)
        && let Some(m) = v.pointer("/error/message").or_else(|| v.get("message")).and_then(Value::as_str)
    {
        return m.to_string();
    }
    snippet(bytes)
}

/// A small xorshift generator for retry jitter (no reproducibility needed).
struct Jitter(u64);

impl Jitter {
    fn new(salt: u64) -> Self {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Jitter((t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Client-side requests-per-minute (evenly spaced) and tokens-per-minute (token bucket) limits.
struct Limiter {
    rpm: Option<f64>,
    tpm: Option<f64>,
    state: tokio::sync::Mutex<LimiterState>,
}

struct LimiterState {
    next_request: Instant,
    tokens: f64,
    refilled: Instant,
}

impl Limiter {
    fn new(rpm: Option<f64>, tpm: Option<f64>) -> Self {
        let now = Instant::now();
        Limiter { rpm, tpm, state: tokio::sync::Mutex::new(LimiterState { next_request: now, tokens: tpm.unwrap_or(0.0), refilled: now }) }
    }

    async fn acquire(&self, tokens: f64) {
        if self.rpm.is_none() && self.tpm.is_none() {
            return;
        }
        // Waiters queue on the lock, so requests start in arrival order.
        let mut s = self.state.lock().await;
        if let Some(rpm) = self.rpm {
            let now = Instant::now();
            if s.next_request > now {
                tokio::time::sleep_until(s.next_request.into()).await;
            }
            s.next_request = s.next_request.max(now) + Duration::from_secs_f64(60.0 / rpm);
        }
        if let Some(tpm) = self.tpm {
            let need = tokens.min(tpm);
            loop {
                let now = Instant::now();
                s.tokens = (s.tokens + now.duration_since(s.refilled).as_secs_f64() * tpm / 60.0).min(tpm);
                s.refilled = now;
                if s.tokens >= need {
                    s.tokens -= need;
                    break;
                }
                tokio::time::sleep(Duration::from_secs_f64((need - s.tokens) * 60.0 / tpm)).await;
            }
        }
    }
}

fn estimate_tokens(text_chars: usize, max_tokens: u32) -> f64 {
    text_chars as f64 / 4.0 + f64::from(max_tokens)
}

fn usage(v: &Value, key: &str) -> Option<u64> {
    v.pointer(&format!("/usage/{key}")).and_then(Value::as_u64)
}

fn parse_chat(v: &Value) -> std::result::Result<Generation, String> {
    let choice = v.pointer("/choices/0").ok_or_else(|| format!("response has no choices: {}", snippet(v.to_string().as_bytes())))?;
    let text = match (choice.pointer("/message/content"), choice.pointer("/message/refusal")) {
        (Some(Value::String(s)), _) => s.clone(),
        // a refusal is the model's answer: stored and scored as what it said
        (Some(Value::Null) | None, Some(Value::String(r))) => r.clone(),
        (Some(Value::Null) | None, _) => {
            let finish = choice.get("finish_reason").and_then(Value::as_str).map_or(String::new(), |f| format!(" (finish_reason {f:?})"));
            return Err(format!("the response has no answer text: message.content is {}{finish}", if choice.pointer("/message/content").is_some() { "null" } else { "missing" }));
        }
        (Some(other), _) => return Err(format!("message.content is not a string: {other}")),
    };
    Ok(Generation {
        text,
        prompt_tokens: usage(v, "prompt_tokens"),
        completion_tokens: usage(v, "completion_tokens"),
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
    })
}

fn parse_completion(v: &Value) -> std::result::Result<Generation, String> {
    let choice = v.pointer("/choices/0").ok_or_else(|| format!("response has no choices: {}", snippet(v.to_string().as_bytes())))?;
    let text = match choice.get("text") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err("choices[0].text is missing".into()),
        Some(other) => return Err(format!("choices[0].text is not a string: {other}")),
    };
    Ok(Generation {
        text,
        prompt_tokens: usage(v, "prompt_tokens"),
        completion_tokens: usage(v, "completion_tokens"),
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
    })
}

/// Sums the echoed log-probabilities of the tokens that cover characters `from..` of `prompt`.
///
/// Tokens are placed by `text_offset` (character offsets); a token belongs to the continuation
/// when it ends after `from`, and tokens starting at or after the prompt's end (the generated one)
/// are ignored. Each prompt token must be the prompt's text at its offset: a server that echoes
/// another text, or gives byte offsets, would otherwise have its log-probabilities summed over the
/// wrong tokens. Greedy means every scored token is the top entry of `top_logprobs` (lm-eval's rule).
pub fn sum_logprobs(v: &Value, prompt: &str, from: usize) -> std::result::Result<Loglikelihood, String> {
    let chars: Vec<char> = prompt.chars().collect();
    let to = chars.len();
    if v.pointer("/choices/0").is_none() {
        return Err(format!("response has no choices: {}", snippet(v.to_string().as_bytes())));
    }
    let lp = v.pointer("/choices/0/logprobs").filter(|x| !x.is_null()).ok_or(
        "the server returned no logprobs; it does not support `echo` with `logprobs` on /completions (use api = \"chat\" to fall back to generation)",
    )?;
    let tokens = lp.get("tokens").and_then(Value::as_array).ok_or("logprobs.tokens is missing")?;
    let logprobs = lp.get("token_logprobs").and_then(Value::as_array).ok_or("logprobs.token_logprobs is missing")?;
    let top = lp.get("top_logprobs").and_then(Value::as_array);
    let offsets: Vec<usize> = match lp.get("text_offset").and_then(Value::as_array) {
        Some(o) => o.iter().map(|x| x.as_u64().map(|u| u as usize).ok_or("logprobs.text_offset holds a non-integer")).collect::<std::result::Result<_, _>>()?,
        None => {
            let mut acc = 0;
            tokens.iter().map(|t| { let o = acc; acc += t.as_str().map_or(0, |s| s.chars().count()); o }).collect()
        }
    };
    if logprobs.len() != tokens.len() || offsets.len() != tokens.len() {
        return Err(format!("logprobs arrays have different lengths: tokens {}, token_logprobs {}, text_offset {}", tokens.len(), logprobs.len(), offsets.len()));
    }
    let mut out = Loglikelihood { logprob: 0.0, is_greedy: Some(true), tokens: 0 };
    // a token without top_logprobs leaves greediness unknown, unless another token settles it
    let mut unknown = false;
    for i in 0..tokens.len() {
        let start = offsets[i];
        if start >= to {
            break;
        }
        let token = tokens[i].as_str().unwrap_or_default();
        // a token that is part of a character ("bytes:…", or U+FFFD for a split one) cannot be compared
        let whole = !token.starts_with("bytes:") && !token.contains('\u{fffd}');
        let expected: String = chars[start..(start + token.chars().count()).min(to)].iter().collect();
        // character offsets step by each whole token's length; byte offsets step further
        let next_ok = !whole || offsets.get(i + 1).is_none_or(|&n| n == start + token.chars().count());
        if whole && !token.starts_with(&expected) || i > 0 && start < offsets[i - 1] || !next_ok {
            return Err(format!(
                "echoed token {i} {token:?} at character {start} is not the prompt's text there ({expected:?}): the server does not echo the prompt as sent, or gives byte offsets, so its log-probabilities cannot be placed"
            ));
        }
        let end = offsets.get(i + 1).copied().unwrap_or(start + token.chars().count()).max(start + token.chars().count().min(1));
        if end <= from {
            continue;
        }
        let Some(lp) = logprobs[i].as_f64() else {
            if from == 0 && i == 0 {
                continue; // the first token of a text has no context to be scored against
            }
            return Err(format!("no log-probability for token {i} ({token:?})"));
        };
        // a probability is at most 1 (a little rounding above 0 is let through)
        if lp.is_nan() || lp > 1e-4 {
            return Err(format!("token {i} ({token:?}) has log-probability {lp}, which no probability has (a log-probability is at most 0)"));
        }
        out.logprob += lp;
        out.tokens += 1;
        match top.and_then(|t| t.get(i)) {
            Some(Value::Object(alts)) if !alts.is_empty() => {
                let best = alts.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k, x))).max_by(|a, b| a.1.total_cmp(&b.1));
                if best.is_some_and(|(k, _)| k != token) {
                    out.is_greedy = Some(false);
                }
            }
            _ => unknown = true,
        }
    }
    if unknown && out.is_greedy == Some(true) {
        out.is_greedy = None;
    }
    if out.tokens == 0 && from < to {
        return Err("no continuation token was scored; the server's text offsets do not cover the continuation".into());
    }
    Ok(out)
}

impl Model for RemoteModel {
    fn halted(&self) -> Option<String> {
        self.breaker.halted()
    }

    fn identity(&self) -> Value {
        json!({
            "engine": "openai",
            "base-url": self.cfg.base_url,
            "model": self.cfg.model,
            "api": self.cfg.api,
            "system-prompt": self.cfg.system_prompt,
            "extra-body": self.cfg.extra_body,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { loglikelihood: self.cfg.api == Api::Completions }
    }

    fn generate(&self, requests: &[GenRequest], sink: Sink<'_, Generation>) {
        let jobs = requests
            .iter()
            .map(|r| {
                let mut body = json!({"model": self.cfg.model, "temperature": r.temperature});
                body[self.cfg.max_tokens_field.name()] = json!(r.max_tokens);
                let chars;
                match self.cfg.api {
                    Api::Chat => {
                        let msgs = self.messages(&r.context);
                        chars = msgs.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum();
                        body["messages"] = Value::Array(msgs);
                    }
                    Api::Completions => {
                        let text = match &r.context {
                            Context::Text(t) => t.clone(),
                            Context::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n\n"),
                        };
                        chars = text.len();
                        body["prompt"] = Value::String(text);
                    }
                }
                if let Some(p) = r.top_p {
                    body["top_p"] = json!(p);
                }
                if let Some(s) = r.seed {
                    body["seed"] = json!(s);
                }
                if !r.stop.is_empty() {
                    body["stop"] = json!(r.stop);
                }
                let (path, parse): (&'static str, ParseFn<Generation>) = match self.cfg.api {
                    Api::Chat => ("/chat/completions", parse_chat),
                    Api::Completions => ("/completions", parse_completion),
                };
                Job { path, body: self.with_extra(body), tokens: estimate_tokens(chars, r.max_tokens), parse: Box::new(parse) }
            })
            .collect();
        self.execute(jobs, sink);
    }

    fn loglikelihood(&self, requests: &[LoglikelihoodRequest], sink: Sink<'_, Loglikelihood>) {
        let jobs = requests
            .iter()
            .map(|r| {
                let prompt = format!("{}{}", r.context, r.continuation);
                let from = r.context.chars().count();
                let body = json!({"model": self.cfg.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
                Job { path: "/completions", body: self.with_extra(body), tokens: estimate_tokens(prompt.len(), 1), parse: Box::new(move |v: &Value| sum_logprobs(v, &prompt, from)) }
            })
            .collect();
        self.execute(jobs, sink);
    }

    fn loglikelihood_rolling(&self, requests: &[RollingRequest], sink: Sink<'_, Loglikelihood>) {
        let jobs = requests
            .iter()
            .map(|r| {
                let text = r.text.clone();
                let body = json!({"model": self.cfg.model, "prompt": r.text, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": true});
                Job { path: "/completions", body: self.with_extra(body), tokens: estimate_tokens(r.text.len(), 1), parse: Box::new(move |v: &Value| sum_logprobs(v, &text, 0)) }
            })
            .collect();
        self.execute(jobs, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_halts_on_a_streak_of_give_ups_or_a_rejection() {
        let b = Breaker::new(1); // concurrency 1: the streak is MIN_STREAK = 3
        assert!(!b.gave_up("u", "e1") && !b.gave_up("u", "e2"));
        b.answered(); // an answer in between: the server is up
        assert!(!b.gave_up("u", "e3") && !b.gave_up("u", "e4"));
        assert!(b.halted().is_none());
        assert!(b.gave_up("u", "e5"));
        assert!(b.halted().unwrap().contains("none of the last 3 requests") && b.halted().unwrap().contains("(the last: e5)"));

        let b = Breaker::new(8);
        assert!((0..7).all(|_| !b.gave_up("u", "e")) && b.gave_up("u", "e"));

        // 401/403 at any time; 404 only before the endpoint has answered anything
        let b = Breaker::new(8);
        b.answered();
        assert!(!b.rejected("u", "HTTP 404: no such route", true));
        assert!(b.halted().is_none());
        assert!(b.rejected("u", "HTTP 401: bad key", false));
        assert!(b.halted().unwrap().contains("rejects every request") && b.halted().unwrap().contains("HTTP 401: bad key"));
        assert!(Breaker::new(8).rejected("u", "HTTP 404: model not found", true));
    }

    fn echo(tokens: &[&str], lps: &[Option<f64>], tops: &[&str]) -> Value {
        let mut off = 0;
        let offsets: Vec<usize> = tokens.iter().map(|t| { let o = off; off += t.chars().count(); o }).collect();
        let top: Vec<Value> = tops.iter().zip(lps).map(|(t, lp)| json!({ *t: lp.unwrap_or(0.0) + 0.0 })).collect();
        json!({"choices": [{"logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}}]})
    }

    #[test]
    fn sums_only_continuation_tokens() {
        // "Q: 1+1 A:" + " 2", then one generated token.
        let v = echo(&["Q", ":", " 1+1", " A", ":", " 2", "\n"], &[None, Some(-1.0), Some(-2.0), Some(-0.5), Some(-0.1), Some(-0.25), Some(-3.0)], &["Q", ":", " 1+1", " A", ":", " 2", "\n"]);
        let ll = sum_logprobs(&v, "Q: 1+1 A: 2", 9).unwrap();
        assert_eq!(ll, Loglikelihood { logprob: -0.25, is_greedy: Some(true), tokens: 1 });
        let rolling = sum_logprobs(&v, "Q: 1+1 A: 2", 0).unwrap();
        assert_eq!(rolling.tokens, 5);
        assert!((rolling.logprob - -3.85).abs() < 1e-12);
    }

    /// An echo that is not the prompt (a token dropped, byte offsets) is an error, not a sum over
    /// the wrong tokens.
    #[test]
    fn an_echo_that_is_not_the_prompt_is_an_error() {
        // the last prompt token dropped: the generated "\n" sits where " 2" should be
        let v = echo(&["Q", ":", " 1+1", " A", ":", "\n"], &[None, Some(-1.0), Some(-2.0), Some(-0.5), Some(-0.1), Some(-3.0)], &["Q", ":", " 1+1", " A", ":", "\n"]);
        let e = sum_logprobs(&v, "Q: 1+1 A: 2", 9).unwrap_err();
        assert!(e.contains("echoed token 5 \"\\n\" at character 9 is not the prompt's text there (\" \")"), "{e}");
        // byte offsets on non-ASCII text
        let mut v = echo(&["th", "é", " eau", "!"], &[None, Some(-1.0), Some(-2.0), Some(-1.0)], &["th", "é", " eau", "!"]);
        v["choices"][0]["logprobs"]["text_offset"] = json!([0, 2, 4, 8]);
        assert!(sum_logprobs(&v, "thé eau", 3).unwrap_err().contains("echoed token 1"));
        // ... also where the first token is the whole context (it has no log-probability)
        let mut v = echo(&["日本", "です", "!"], &[None, Some(-1.0), Some(-1.0)], &["日本", "です", "!"]);
        v["choices"][0]["logprobs"]["text_offset"] = json!([0, 6, 12]);
        assert!(sum_logprobs(&v, "日本です", 2).unwrap_err().contains("echoed token 0 \"日本\" at character 0"));
        // tokens that are parts of one character are not compared
        let mut v = echo(&["a", "\u{fffd}", "\u{fffd}", "!", "?"], &[None, Some(-1.0), Some(-1.0), Some(-1.0), Some(-5.0)], &["a", "x", "x", "!", "?"]);
        v["choices"][0]["logprobs"]["text_offset"] = json!([0, 1, 1, 2, 3]);
        let ll = sum_logprobs(&v, "a☕!", 1).unwrap();
        assert_eq!((ll.logprob, ll.tokens), (-3.0, 3));
    }

    #[test]
    fn greedy_is_top_token() {
        let v = echo(&["a", " b"], &[None, Some(-2.0)], &["a", " c"]);
        assert_eq!(sum_logprobs(&v, "a b", 1).unwrap().is_greedy, Some(false));
        // without top_logprobs it cannot be told; one token that is not the top one settles it
        let mut v = echo(&["a", " b", " c"], &[None, Some(-2.0), Some(-1.0)], &["a", " b", " d"]);
        v["choices"][0]["logprobs"]["top_logprobs"][1] = Value::Null;
        assert_eq!(sum_logprobs(&v, "a b", 1).unwrap().is_greedy, None);
        assert_eq!(sum_logprobs(&v, "a b c", 1).unwrap().is_greedy, Some(false));
        v["choices"][0]["logprobs"]["top_logprobs"] = Value::Null;
        assert_eq!(sum_logprobs(&v, "a b c", 1).unwrap().is_greedy, None);
    }

    #[test]
    fn completion_text_that_is_not_a_string_says_so() {
        assert_eq!(parse_completion(&json!({"choices": [{"text": 42}]})).unwrap_err(), "choices[0].text is not a string: 42");
        assert_eq!(parse_completion(&json!({"choices": [{"text": null}]})).unwrap_err(), "choices[0].text is missing");
        assert!(sum_logprobs(&json!({"choices": []}), "x", 0).unwrap_err().starts_with("response has no choices"));
    }

    #[test]
    fn a_log_probability_above_zero_is_an_error() {
        let v = echo(&["a", " b"], &[None, Some(5.0)], &["a", " b"]);
        assert!(sum_logprobs(&v, "a b", 1).unwrap_err().contains("has log-probability 5, which no probability has"));
        let v = echo(&["a", " b"], &[None, Some(1e-7)], &["a", " b"]);
        assert!(sum_logprobs(&v, "a b", 1).is_ok(), "rounding above 0");
    }

    #[test]
    fn a_chat_answer_without_text_is_an_error_and_a_refusal_is_the_answer() {
        let answer = |m: Value| parse_chat(&json!({"choices": [{"message": m, "finish_reason": "stop"}]}));
        assert_eq!(answer(json!({"content": "hi"})).unwrap().text, "hi");
        assert_eq!(answer(json!({"content": null, "refusal": "I can't help with that."})).unwrap().text, "I can't help with that.");
        assert_eq!(answer(json!({"content": null})).unwrap_err(), "the response has no answer text: message.content is null (finish_reason \"stop\")");
        assert_eq!(answer(json!({"role": "assistant"})).unwrap_err(), "the response has no answer text: message.content is missing (finish_reason \"stop\")");
        assert!(parse_chat(&json!({"choices": [{}]})).is_err());
    }

    #[test]
    fn missing_logprobs_is_an_error() {
        let v = json!({"choices": [{"text": "x"}]});
        assert!(sum_logprobs(&v, "x", 0).unwrap_err().contains("echo"));
    }
}
