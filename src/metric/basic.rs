//! The metrics of the harness core, each defined exactly as its reference: SQuAD's token F1 and
//! lm-evaluation-harness's `acc`, `acc_norm` (log-likelihood over the choice's character length)
//! and perplexities.

use super::text::{py_lower, py_split};
use super::{Evidence, Metric};
use crate::prompt::Item;

fn target(item: &Item) -> Result<&str, String> {
    item.target.as_deref().ok_or_else(|| "the item has no target".to_string())
}

fn answer(e: &Evidence) -> Result<&str, String> {
    match e {
        Evidence::Generation { answer, .. } | Evidence::Letter { answer, .. } => Ok(answer),
        _ => Err("needs a generated answer".into()),
    }
}

fn bool_score(b: bool) -> Vec<f64> {
    vec![if b { 1.0 } else { 0.0 }]
}

/// 1 when the extracted answer equals the target, both trimmed of surrounding whitespace.
pub struct ExactMatch;
impl Metric for ExactMatch {
    fn name(&self) -> &'static str {
        "exact-match"
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        Ok(bool_score(answer(e)?.trim() == target(item)?.trim()))
    }
}

/// 1 when the target (trimmed) occurs in the extracted answer.
pub struct Contains;
impl Metric for Contains {
    fn name(&self) -> &'static str {
        "contains"
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        Ok(bool_score(answer(e)?.contains(target(item)?.trim())))
    }
}

/// SQuAD's answer normalisation, then `.split()`: lower-case, drop ASCII punctuation
/// (`string.punctuation`), replace the articles a/an/the between word boundaries
/// (`re.sub(r"\b(a|an|the)\b", " ", text)`, so "the" in “the” or "the—" goes too), split on
/// Python's whitespace.
pub fn squad_normalize(s: &str) -> Vec<String> {
    let no_punct: String = py_lower(s).chars().filter(|c| !c.is_ascii_punctuation()).collect();
    py_split(&drop_articles(&no_punct)).map(str::to_string).collect()
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)`: a word character is Python's `\w` (alphanumeric or
/// `_`; Rust's alphanumeric also counts combining letters, such as some vowel signs, that
/// Python does not).
fn drop_articles(text: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut i = 0;
    'scan: while i < text.len() {
        let rest = &text[i..];
        if !word(prev) {
            // the alternatives in order, as the regex tries them
            for art in ["a", "an", "the"] {
                if rest.starts_with(art) && !word(rest[art.len()..].chars().next()) {
                    out.push(' ');
                    prev = art.chars().last();
                    i += art.len();
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// SQuAD token F1 between the extracted answer and the target.
pub struct TokenF1;
impl Metric for TokenF1 {
    fn name(&self) -> &'static str {
        "f1"
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        Ok(vec![token_f1(answer(e)?, target(item)?)])
    }
}

pub fn token_f1(prediction: &str, truth: &str) -> f64 {
    let p = squad_normalize(prediction);
    let t = squad_normalize(truth);
    if p.is_empty() || t.is_empty() {
        return if p == t { 1.0 } else { 0.0 };
    }
    let mut counts = std::collections::HashMap::new();
    for w in &t {
        *counts.entry(w.as_str()).or_insert(0i64) += 1;
    }
    let mut common = 0i64;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / t.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// First index of the maximum (numpy's `argmax`).
fn argmax(xs: impl Iterator<Item = f64>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in xs.enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

fn gold(item: &Item) -> Result<usize, String> {
    item.gold.ok_or_else(|| "the item has no gold choice".to_string())
}

/// Accuracy: the highest-likelihood choice is gold (multiple choice); the continuation is the
/// greedy one (loglikelihood); the generated letter is gold (chat fallback).
pub struct Acc;
impl Metric for Acc {
    fn name(&self) -> &'static str {
        "acc"
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        match e {
            Evidence::Choices { results } => Ok(bool_score(argmax(results.iter().map(|r| r.logprob)) == Some(gold(item)?))),
            Evidence::Letter { picked, .. } => Ok(bool_score(*picked == Some(gold(item)?))),
            Evidence::Continuation { result } => result.is_greedy.map(bool_score).ok_or_else(|| "the server gave no top_logprobs, so whether the continuation is the greedy one cannot be told".into()),
            _ => Err("acc needs choice log-likelihoods".into()),
        }
    }
}

/// lm-eval's `acc_norm`: argmax of log-likelihood divided by the choice's length in characters.
pub struct AccNorm;
impl Metric for AccNorm {
    fn name(&self) -> &'static str {
        "acc-norm"
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        match e {
            Evidence::Choices { results } => {
                let normed = results.iter().zip(&item.choices).map(|(r, c)| r.logprob / c.chars().count() as f64);
                Ok(bool_score(argmax(normed) == Some(gold(item)?)))
            }
            _ => Err("acc-norm needs choice log-likelihoods, which this endpoint does not give".into()),
        }
    }
}

fn continuation(e: &Evidence) -> Result<f64, String> {
    match e {
        Evidence::Continuation { result } => Ok(result.logprob),
        _ => Err("needs a continuation log-likelihood".into()),
    }
}

/// Mean log-likelihood of the target continuation.
pub struct LoglikelihoodMetric;
impl Metric for LoglikelihoodMetric {
    fn name(&self) -> &'static str {
        "loglikelihood"
    }
    fn score(&self, _: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        Ok(vec![continuation(e)?])
    }
}

/// lm-eval's `perplexity` for loglikelihood tasks: exp of minus the mean log-likelihood.
pub struct Perplexity;
impl Metric for Perplexity {
    fn name(&self) -> &'static str {
        "perplexity"
    }
    fn score(&self, _: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        Ok(vec![continuation(e)?])
    }
    fn is_corpus(&self) -> bool {
        true
    }
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        self.test_statistic(stats).exp()
    }
    /// The log perplexity (the mean negative log-likelihood).
    fn test_statistic(&self, stats: &[&[f64]]) -> f64 {
        -stats.iter().map(|s| s[0]).sum::<f64>() / stats.len() as f64
    }
}

/// lm-eval's rolling perplexities: log-likelihood summed over the corpus, divided by words (as
/// `re.split(r"\s+", doc)` counts them) or UTF-8 bytes.
pub enum RollingPerplexity {
    Word,
    Byte,
    BitsPerByte,
}

impl Metric for RollingPerplexity {
    fn name(&self) -> &'static str {
        match self {
            RollingPerplexity::Word => "word-perplexity",
            RollingPerplexity::Byte => "byte-perplexity",
            RollingPerplexity::BitsPerByte => "bits-per-byte",
        }
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let Evidence::Rolling { result } = e else { return Err("needs a rolling log-likelihood".into()) };
        let unit = match self {
            RollingPerplexity::Word => whitespace_split_count(&item.prompt) as f64,
            _ => item.prompt.len() as f64,
        };
        Ok(vec![result.logprob, unit])
    }
    fn is_corpus(&self) -> bool {
        true
    }
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        let nll = self.test_statistic(stats);
        match self {
            RollingPerplexity::BitsPerByte => nll / std::f64::consts::LN_2,
            _ => nll.exp(),
        }
    }
    /// The negative log-likelihood per word or byte (the log perplexity).
    fn test_statistic(&self, stats: &[&[f64]]) -> f64 {
        let ll: f64 = stats.iter().map(|s| s[0]).sum();
        let units: f64 = stats.iter().map(|s| s[1]).sum();
        -ll / units
    }
}

/// `len(re.split(r"\s+", text))`: empty pieces at either end count, as in Python.
pub fn whitespace_split_count(text: &str) -> usize {
    static WS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    WS.get_or_init(|| regex::Regex::new(r"\s+").expect("valid regex")).split(text).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Loglikelihood;

    fn item(choices: &[&str], gold: usize) -> Item {
        Item {
            index: 0,
            id: "0".into(),
            doc_hash: String::new(),
            category: None,
            prompt: "p".into(),
            target: Some(" 42 ".into()),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            gold: Some(gold),
            human: None,
            turns: vec![],
        }
    }

    fn ll(x: f64) -> Loglikelihood {
        Loglikelihood { logprob: x, is_greedy: Some(false), tokens: 1 }
    }

    #[test]
    fn squad_f1() {
        // Values from the SQuAD v1.1 evaluation script.
        assert_eq!(token_f1("The cat sat", "a cat sat."), 1.0);
        assert!((token_f1("cat sat on mat", "cat sat") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("the", "a"), 1.0);
        assert_eq!(token_f1("dog", "cat"), 0.0);
        // Python's normalize_answer: articles go at word boundaries, not only as whole tokens
        assert_eq!(squad_normalize("\u{201c}The Eiffel Tower\u{201d} — the—answer"), ["\u{201c}", "eiffel", "tower\u{201d}", "—", "—answer"]);
        assert_eq!(squad_normalize("An anthem, a_b then\u{1f}THE"), ["anthem", "ab", "then"]);
        assert_eq!(squad_normalize("the the  a"), Vec::<String>::new());
    }

    #[test]
    fn acc_and_acc_norm_differ_as_in_lm_eval() {
        // Choice 1 has the higher raw log-likelihood, choice 0 the higher per-character one.
        let it = item(&["a long correct answer", "no"], 0);
        let e = Evidence::Choices { results: vec![ll(-10.0), ll(-4.0)] };
        assert_eq!(Acc.score(&it, &e).unwrap(), vec![0.0]);
        assert_eq!(AccNorm.score(&it, &e).unwrap(), vec![1.0]);
        // Ties go to the first index, like numpy.argmax.
        let e = Evidence::Choices { results: vec![ll(-1.0), ll(-1.0)] };
        assert_eq!(Acc.score(&it, &e).unwrap(), vec![1.0]);
    }

    #[test]
    fn exact_match_trims() {
        let it = item(&[], 0);
        let e = Evidence::Generation { response: "x".into(), answer: "42".into() };
        assert_eq!(ExactMatch.score(&it, &e).unwrap(), vec![1.0]);
    }

    #[test]
    fn python_split_count() {
        assert_eq!(whitespace_split_count("a b  c"), 3);
        assert_eq!(whitespace_split_count(" a b "), 4);
    }

    #[test]
    fn rolling_perplexity_is_a_corpus_ratio() {
        let m = RollingPerplexity::Word;
        let a = [-4.0, 2.0];
        let b = [-2.0, 2.0];
        assert!((m.aggregate(&[&a, &b]) - (6.0f64 / 4.0).exp()).abs() < 1e-12);
    }
}
