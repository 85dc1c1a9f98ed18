//! Reference-based text metrics as suite metrics: BLEU, chrF(++), ROUGE, the ChatGLM metrics and
//! distinct-n, comparing each sample's extracted answer with its target.
//!
//! BLEU, chrF and distinct-n are corpus metrics: a sample keeps its sufficient statistics and the
//! task's figure is computed from their sum (and bootstrapped), exactly as the stand-alone
//! command computes it; the per-sample value is the sentence-level score.

use super::sacrebleu::{self, BleuOptions, ChrfOptions};
use super::{Evidence, Metric};
use crate::prompt::Item;

fn pair<'a>(item: &'a Item, e: &'a Evidence) -> Result<(&'a str, &'a str), String> {
    let answer = match e {
        Evidence::Generation { answer, .. } => answer.as_str(),
        _ => return Err("needs a generated answer".into()),
    };
    Ok((answer, item.target.as_deref().ok_or("the item has no target")?))
}

/// `bleu` (sacrebleu's 13a tokenizer), `bleu-intl`, `bleu-zh`, `bleu-char`, `bleu-none`: sacrebleu corpus BLEU;
/// per sample, sentence BLEU.
pub struct Bleu(pub sacrebleu::Tokenize);
impl Metric for Bleu {
    fn name(&self) -> &'static str {
        match self.0 {
            sacrebleu::Tokenize::Thirteen => "bleu",
            sacrebleu::Tokenize::Intl => "bleu-intl",
            sacrebleu::Tokenize::Zh => "bleu-zh",
            sacrebleu::Tokenize::Char => "bleu-char",
            sacrebleu::Tokenize::None => "bleu-none",
        }
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let (h, r) = pair(item, e)?;
        let o = BleuOptions { tokenize: self.0, ..BleuOptions::default() };
        Ok(sacrebleu::bleu_stats(h, &[r], &o).iter().map(|&x| x as f64).collect())
    }
    fn is_corpus(&self) -> bool {
        true
    }
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        sacrebleu::bleu_from_stats(&sum_u64(stats), false).score
    }
    fn sample_value(&self, stats: &[f64]) -> f64 {
        sacrebleu::bleu_from_stats(&sum_u64(&[stats]), true).score
    }
}

/// `chrf` / `chrf++`: sacrebleu corpus chrF with word order 0 / 2.
pub struct Chrf(pub usize);
impl Metric for Chrf {
    fn name(&self) -> &'static str {
        if self.0 == 0 { "chrf" } else { "chrf++" }
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let (h, r) = pair(item, e)?;
        Ok(sacrebleu::chrf_stats(h, &[r], &ChrfOptions { word_order: self.0, lowercase: false }).iter().map(|&x| x as f64).collect())
    }
    fn is_corpus(&self) -> bool {
        true
    }
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        sacrebleu::chrf_from_stats(&sum_u64(stats))
    }
}

fn sum_u64(stats: &[&[f64]]) -> Vec<u64> {
    let width = stats.first().map_or(0, |s| s.len());
    let mut acc = vec![0u64; width];
    for s in stats {
        for (a, x) in acc.iter_mut().zip(s.iter()) {
            *a += *x as u64;
        }
    }
    acc
}

/// `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (F-measure; `-stem` variants stem tokens).
pub struct Rouge {
    pub name: &'static str,
    pub kind: super::rouge::RougeType,
    pub stem: bool,
}
impl Metric for Rouge {
    fn name(&self) -> &'static str {
        self.name
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let (h, r) = pair(item, e)?;
        Ok(vec![super::rouge::score(r, h, &[self.kind], self.stem)[0].fmeasure])
    }
}

/// `chatglm-rouge-1`, `-rouge-2`, `-rouge-l`, `-bleu-4`: the ChatGLM2-6B evaluation (0–100).
pub struct ChatGlm(pub usize);
impl Metric for ChatGlm {
    fn name(&self) -> &'static str {
        ["chatglm-rouge-1", "chatglm-rouge-2", "chatglm-rouge-l", "chatglm-bleu-4"][self.0]
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let (h, r) = pair(item, e)?;
        Ok(vec![super::chatglm::sample(h, r)[self.0]])
    }
}

/// `distinct-1`, `distinct-2`: unique n-grams over all n-grams of the task's answers.
pub struct Distinct(pub usize);
impl Metric for Distinct {
    fn name(&self) -> &'static str {
        if self.0 == 1 { "distinct-1" } else { "distinct-2" }
    }
    fn score(&self, item: &Item, e: &Evidence) -> Result<Vec<f64>, String> {
        let _ = item;
        match e {
            Evidence::Generation { answer, .. } => Ok(super::diversity::distinct_stats(answer, self.0)),
            _ => Err("needs a generated answer".into()),
        }
    }
    fn is_corpus(&self) -> bool {
        true
    }
    fn aggregate(&self, stats: &[&[f64]]) -> f64 {
        super::diversity::distinct_from_stats(stats)
    }
}
