//! Running a loaded model: log-likelihood scoring with shared prefixes, and generation.
//!
//! Scoring sorts the requests by their token sequences and walks them with one KV cache: each
//! request keeps the longest prefix it shares with the one before, so a multiple-choice context is
//! computed once for all its choices and a few-shot preamble once for a whole task.

use super::device::{choose, probe_cuda, Choice, Device};
use super::llama::{logprob_and_greedy, Cache};
use super::load::EngineError;
use super::numerics::AttnOrder;
use super::Engine;

/// Score `continuation` given `context` (token ids; the context must not be empty).
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreResult {
    /// Sum of the continuation tokens' log-probabilities.
    pub logprob: f64,
    /// Whether every continuation token is the argmax.
    pub is_greedy: bool,
    pub token_logprobs: Vec<f64>,
}

/// Sampling settings; `temperature == 0` is greedy and never samples.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: &'static str,
    /// Why the generation cannot be trusted (logits that hold NaN): the request's error.
    pub error: Option<String>,
}

pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What the model is fed to score a continuation of `n_cont` tokens ending `full` (context then
/// continuation), and the index of the input position whose logits predict the continuation's
/// first token. lm-eval: the model sees the last `max_len + 1` tokens, minus the final one.
pub(crate) fn score_input(full: &[u32], n_cont: usize, max_len: usize) -> (&[u32], usize) {
    let mut seq = full;
    if seq.len() > max_len + 1 {
        seq = &seq[seq.len() - (max_len + 1)..];
    }
    let input = &seq[..seq.len().saturating_sub(1)];
    (input, input.len().saturating_sub(n_cont))
}

/// The prompt a generation feeds: a prompt too long to leave room for `max_tokens` keeps its tail.
pub(crate) fn gen_prompt(prompt: &[u32], max_tokens: usize, max_ctx: usize) -> &[u32] {
    if prompt.len() + max_tokens > max_ctx && prompt.len() > max_ctx / 2 {
        &prompt[prompt.len() - (max_ctx.saturating_sub(max_tokens)).max(1)..]
    } else {
        prompt
    }
}

/// What a generation step is given of the logits after the last fed token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Logits<'a> {
    /// The whole row (needed to sample, see [`GenState::needs_logits`]).
    Row(&'a [f32]),
    /// A device's reduction of the row: its argmax, and the first index whose logit is NaN.
    Reduced { argmax: u32, nan: Option<u32> },
}

/// One generation between model steps: the tokens so far, how it ended, its sampler. The CPU and
/// GPU loops both drive it, so stopping rules are defined once.
pub(crate) struct GenState<'a> {
    opts: &'a GenOptions,
    eos: &'a [u32],
    rng: crate::stats::SplitMix64,
    pub tokens: Vec<u32>,
    pub finish: &'static str,
    pub error: Option<String>,
}

impl<'a> GenState<'a> {
    pub fn new(opts: &'a GenOptions, eos: &'a [u32]) -> Self {
        GenState { opts, eos, rng: crate::stats::SplitMix64::new(opts.seed), tokens: Vec::new(), finish: "length", error: None }
    }

    /// Whether the next step needs the whole row of logits (sampling), not only its argmax.
    pub fn needs_logits(&self) -> bool {
        self.opts.temperature > 0.0
    }

    /// Given the logits after the last fed token and the sequence's length so far, picks the next
    /// token: `Some` to feed it, `None` when the generation has ended.
    pub fn advance(&mut self, logits: Logits<'_>, seq_len: usize, max_ctx: usize, decode: &dyn Fn(&[u32]) -> String) -> Option<u32> {
        if self.tokens.len() >= self.opts.max_tokens || seq_len >= max_ctx {
            return None;
        }
        // a NaN logit never wins a comparison, so the choice would silently follow it
        let nan = match logits {
            Logits::Row(l) => l.iter().position(|x| x.is_nan()),
            Logits::Reduced { nan, .. } => nan.map(|i| i as usize),
        };
        if let Some(i) = nan {
            self.error = Some(format!("the logit of token {i} is NaN after {} generated token(s): the weights are damaged", self.tokens.len()));
            return None;
        }
        let next = match logits {
            Logits::Row(l) => sample(l, self.opts, &mut self.rng),
            Logits::Reduced { argmax, .. } => argmax,
        };
        if self.eos.contains(&next) {
            self.finish = "stop";
            return None;
        }
        self.tokens.push(next);
        if !self.opts.stop.is_empty() {
            let text = decode(&self.tokens);
            if self.opts.stop.iter().any(|s| !s.is_empty() && text.contains(s.as_str())) {
                self.finish = "stop";
                return None;
            }
        }
        Some(next)
    }

    /// The result: the decoded text cut at the first stop string.
    pub fn finish(self, decode: &dyn Fn(&[u32]) -> String) -> Generated {
        let mut text = decode(&self.tokens);
        if let Some(cut) = self.opts.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        Generated { text, tokens: self.tokens, finish_reason: self.finish, error: self.error }
    }
}

/// Index of the largest logit, the first on ties.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Engine {
    /// Prefill chunk: long inputs go through the model in slices of this many tokens, which keeps
    /// memory bounded; llama.cpp's default micro-batch, so a one-token remainder gets the same
    /// single-token attention arithmetic as there.
    const CHUNK: usize = 512;

    /// Feeds `tokens` after the cache's content, returning logits at `want` (indices into `tokens`).
    /// `order`: the attention arithmetic to reproduce; `None` follows each chunk's size, as
    /// llama.cpp does when it evaluates exactly these slices.
    fn feed(&self, cache: &mut Cache, tokens: &[u32], want: &[usize], order: Option<AttnOrder>) -> Vec<f32> {
        let vocab = self.model.config.vocab;
        let mut out = Vec::with_capacity(want.len() * vocab);
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + Self::CHUNK).min(tokens.len());
            let w: Vec<usize> = want.iter().filter(|&&i| i >= start && i < end).map(|&i| i - start).collect();
            let chunk = &tokens[start..end];
            out.extend(match order {
                Some(o) => self.model.forward_ordered(cache, chunk, &w, o),
                None => self.model.forward(cache, chunk, &w),
            });
            start = end;
        }
        out
    }

    /// Scores every request; `sink(i, result)` is called as each finishes (in token order).
    pub fn score_batch(&self, reqs: &[ScoreRequest], sink: &mut dyn FnMut(usize, ScoreResult)) {
        let max_len = self.model.config.ctx_len.max(2);
        let full: Vec<Vec<u32>> = reqs.iter().map(|r| [r.context.as_slice(), r.continuation.as_slice()].concat()).collect();
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by(|&a, &b| full[a].cmp(&full[b]));
        let kv_dim = self.model.kv_dim();
        {
            let mut cache = self.cache();
            for i in order {
                let r = &reqs[i];
                let n_cont = r.continuation.len();
                if n_cont == 0 {
                    sink(i, ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: vec![] });
                    continue;
                }
                let (input, first_pred) = score_input(&full[i], n_cont, max_len);
                let keep = common_prefix(&cache.tokens, input).min(first_pred);
                cache.truncate(keep, kv_dim);
                let fed = &input[keep..];
                let want: Vec<usize> = (first_pred - keep..fed.len()).collect();
                // as llama.cpp evaluating context and continuation in one batch
                let logits = self.install(|| self.feed(&mut cache, fed, &want, Some(AttnOrder::Batch)));
                let vocab = self.model.config.vocab;
                let mut res = ScoreResult { logprob: 0.0, is_greedy: true, token_logprobs: Vec::with_capacity(n_cont) };
                for (j, &tok) in r.continuation.iter().enumerate() {
                    let (lp, greedy) = logprob_and_greedy(&logits[j * vocab..(j + 1) * vocab], tok);
                    res.logprob += lp;
                    res.is_greedy &= greedy;
                    res.token_logprobs.push(lp);
                }
                sink(i, res);
            }
        }
    }

    /// lm-eval's rolling windows (`get_rolling_token_windows` with context length 1, made
    /// disjoint): `(context, continuation)` pairs that together predict every token once.
    pub fn rolling_windows(&self, tokens: &[u32], prefix: u32) -> Vec<ScoreRequest> {
        let max_len = self.model.config.ctx_len.max(2);
        let mut out = Vec::new();
        if tokens.is_empty() {
            return out;
        }
        let pred_len = max_len;
        let first = max_len.min(tokens.len());
        out.push(ScoreRequest { context: vec![prefix], continuation: tokens[..first].to_vec() });
        let mut predicted = first;
        while predicted < tokens.len() {
            let n = (tokens.len() - predicted).min(pred_len);
            let end = predicted + n;
            let ctx_start = end.saturating_sub(max_len + 1);
            let window = &tokens[ctx_start..end - 1];
            let cont = tokens[end - n..end].to_vec();
            // Disjoint: the context is the window minus what the continuation re-predicts.
            let ctx = window[..window.len() - (cont.len() - 1)].to_vec();
            out.push(ScoreRequest { context: ctx, continuation: cont });
            predicted += n;
        }
        out
    }

    /// Generates from `prompt` (token ids, BOS already applied if wanted).
    pub fn generate(&self, prompt: &[u32], opts: &GenOptions) -> Generated {
        self.install(|| {
            let vocab = self.model.config.vocab;
            let max_ctx = self.model.config.ctx_len;
            let mut cache = self.cache();
            let prompt = gen_prompt(prompt, opts.max_tokens, max_ctx);
            let mut logits = self.feed(&mut cache, prompt, &[prompt.len() - 1], None);
            let decode = |t: &[u32]| self.decode(t);
            let mut state = GenState::new(opts, &self.eos);
            while let Some(next) = state.advance(Logits::Row(&logits[..vocab]), cache.len(), max_ctx, &decode) {
                logits = self.model.forward(&mut cache, &[next], &[0]);
            }
            state.finish(&decode)
        })
    }
}

/// Picks the next token: argmax at temperature 0, else temperature / top-k / top-p sampling.
pub(crate) fn sample(logits: &[f32], o: &GenOptions, rng: &mut crate::stats::SplitMix64) -> u32 {
    if o.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = o.top_k.filter(|&k| k > 0) {
        idx.truncate(k);
    }
    let max = f64::from(logits[idx[0]]);
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((f64::from(logits[i]) - max) / o.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = o.top_p.filter(|&p| p < 1.0) {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (j, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p {
                keep = j + 1;
                break;
            }
        }
        idx.truncate(keep);
        probs.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= t);
    }
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (j, q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return idx[j] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

impl Engine {
    /// Prefill and decode speed in tokens/s: a `prompt_len`-token prompt through the model in one
    /// batch, then `decode` greedy single-token steps.
    pub fn bench(&self, prompt_len: usize, decode: usize) -> (f64, f64) {
        let ids = self.bench_prompt(prompt_len);
        self.install(|| {
            let vocab = self.model.config.vocab;
            let mut cache = self.cache();
            let t = std::time::Instant::now();
            let mut logits = self.feed(&mut cache, &ids, &[ids.len() - 1], None);
            let prefill = prompt_len as f64 / t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            for _ in 0..decode {
                let next = (0..vocab).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0) as u32;
                logits = self.model.forward(&mut cache, &[next], &[0]);
            }
            (prefill, decode as f64 / t.elapsed().as_secs_f64())
        })
    }
}

impl Engine {
    /// Puts the engine on `device`: the CPU, or a GPU the weights are uploaded to (f32 when
    /// `model.exact`). `auto` without a usable GPU stays on the CPU and returns the reason as a
    /// note, as does a GPU whose scores may depend on the batch
    /// ([`GpuModel::gemm_note`](super::cuda::GpuModel::gemm_note)); `cuda`/`cuda:N` without a
    /// usable GPU is an error.
    pub fn place(&mut self, device: Device) -> Result<Option<String>, EngineError> {
        self.gpu = None;
        match choose(device, probe_cuda)? {
            Choice::Cpu { note } => Ok(note),
            Choice::Cuda(info) => match super::cuda::GpuModel::load(&self.model, &info) {
                Ok(g) => {
                    let note = g.gemm_note();
                    self.gpu = Some(g);
                    Ok(note)
                }
                Err(e) if device == Device::Auto => Ok(Some(format!("device auto: running on the CPU ({e})"))),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Where scoring and generation run: `cpu`, or the GPU with its weights' storage type.
    pub fn device_label(&self) -> String {
        match &self.gpu {
            Some(g) => format!("{} {}", g.label, g.prec.name()),
            None => "cpu".into(),
        }
    }

    /// [`Engine::score_batch`] on the engine's device.
    /// Whether `r` can be scored: its continuation must leave room for a token of context.
    pub fn fits(&self, r: &ScoreRequest) -> Result<(), EngineError> {
        let context = self.model.config.ctx_len.max(2);
        if r.continuation.len() >= context {
            return Err(EngineError::TooLong { tokens: r.continuation.len(), context });
        }
        Ok(())
    }

    /// A request that does not [`fit`](Engine::fits) is an error for the whole call, before any work.
    pub fn score(&self, reqs: &[ScoreRequest], sink: &mut dyn FnMut(usize, ScoreResult)) -> Result<(), EngineError> {
        reqs.iter().try_for_each(|r| self.fits(r))?;
        match &self.gpu {
            Some(g) => Ok(g.score(reqs, self.model.config.ctx_len.max(2), sink)?),
            None => {
                self.score_batch(reqs, sink);
                Ok(())
            }
        }
    }

    /// Generates for every prompt: on a GPU all together (continuous batching), on the CPU one
    /// after another; `sink(i, result)` as each finishes.
    pub fn generate_all(&self, prompts: &[Vec<u32>], opts: &[GenOptions], sink: &mut dyn FnMut(usize, Generated)) -> Result<(), EngineError> {
        match &self.gpu {
            Some(g) => {
                let decode = |t: &[u32]| self.decode(t);
                Ok(g.generate(prompts, opts, &self.eos, self.model.config.ctx_len, super::cuda::GEN_SLOTS, &decode, sink)?)
            }
            None => {
                for (i, (p, o)) in prompts.iter().zip(opts).enumerate() {
                    if p.is_empty() {
                        sink(i, Generated { text: String::new(), tokens: vec![], finish_reason: "length", error: None });
                    } else {
                        sink(i, self.generate(p, o));
                    }
                }
                Ok(())
            }
        }
    }

    /// [`Engine::bench`] on the engine's device; on a GPU, decode runs `batch` sequences together.
    pub fn bench_on(&self, prompt_len: usize, decode: usize, batch: usize) -> Result<(f64, f64), EngineError> {
        match &self.gpu {
            Some(g) => g.bench(&self.bench_prompt(prompt_len), batch, decode.max(2), false).map(|b| (b.prefill, b.decode)).map_err(Into::into),
            None => Ok(self.bench(prompt_len, decode)),
        }
    }

    /// The benchmarks' prompt: `prompt_len` tokens of plain English.
    pub fn bench_prompt(&self, prompt_len: usize) -> Vec<u32> {
        let text = "The quick brown fox jumps over the lazy dog while the evaluation harness measures how fast a small language model reads and writes text. ";
        let mut ids = Vec::new();
        while ids.len() < prompt_len.max(1) {
            ids.extend(self.encode(text));
        }
        ids.truncate(prompt_len.max(1));
        ids
    }
}
