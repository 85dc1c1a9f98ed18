//! Running a loaded model: log-likelihood scoring with shared prefixes, and generation.
//!
//! Scoring sorts the requests by their token sequences and walks them with one KV cache: each
//! request keeps the longest prefix it shares with the one before, so a multiple-choice context is
//! computed once for all its choices and a few-shot preamble once for a whole task.

use super::llama::{logprob_and_greedy, Cache};
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
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
                // lm-eval: the model sees the last max_len + 1 tokens, minus the final one.
                let mut seq: &[u32] = &full[i];
                if seq.len() > max_len + 1 {
                    seq = &seq[seq.len() - (max_len + 1)..];
                }
                let input = &seq[..seq.len() - 1];
                let first_pred = input.len() - n_cont; // position whose logits predict continuation[0]
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
            let mut prompt = prompt;
            if prompt.len() + opts.max_tokens > max_ctx && prompt.len() > max_ctx / 2 {
                prompt = &prompt[prompt.len() - (max_ctx.saturating_sub(opts.max_tokens)).max(1)..];
            }
            let mut logits = self.feed(&mut cache, prompt, &[prompt.len() - 1], None);
            let mut rng = crate::stats::SplitMix64::new(opts.seed);
            let mut tokens = Vec::new();
            let mut finish = "length";
            while tokens.len() < opts.max_tokens && cache.len() < max_ctx {
                let next = sample(&logits[..vocab], opts, &mut rng);
                if self.eos.contains(&next) {
                    finish = "stop";
                    break;
                }
                tokens.push(next);
                if !opts.stop.is_empty() {
                    let text = self.decode(&tokens);
                    if opts.stop.iter().any(|s| !s.is_empty() && text.contains(s.as_str())) {
                        finish = "stop";
                        break;
                    }
                }
                logits = self.model.forward(&mut cache, &[next], &[0]);
            }
            let mut text = self.decode(&tokens);
            if let Some(cut) = opts.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
            }
            Generated { text, tokens, finish_reason: finish }
        })
    }
}

/// Picks the next token: argmax at temperature 0, else temperature / top-k / top-p sampling.
fn sample(logits: &[f32], o: &GenOptions, rng: &mut crate::stats::SplitMix64) -> u32 {
    if o.temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as u32;
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
        let text = "The quick brown fox jumps over the lazy dog while the evaluation harness measures how fast a small language model reads and writes text. ";
        let mut ids = Vec::new();
        while ids.len() < prompt_len {
            ids.extend(self.encode(text));
        }
        ids.truncate(prompt_len);
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
