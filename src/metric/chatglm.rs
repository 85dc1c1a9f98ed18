//! The ChatGLM2-6B fine-tuning evaluation: per sample, ROUGE-1/2/L F of `rouge_chinese` over
//! jieba-segmented text and nltk's character BLEU-4 with smoothing method 3, each ×100 and
//! rounded to 4 decimals as Python's `round`, then the mean over samples.
//!
//! Segmentation is Python jieba's exactly ([`super::jieba`]); the scoring functions are in
//! [`super::chatglm_core`].

use super::chatglm_core::{python_round, rouge_chinese_f, sentence_bleu4_method3};

/// `[rouge-1, rouge-2, rouge-l, bleu-4]` of one sample, each ×100 and rounded as the script does.
pub fn sample(pred: &str, label: &str) -> [f64; 4] {
    let hyp = super::jieba::cut(pred);
    let reference = super::jieba::cut(label);
    let empty = |toks: &[String]| toks.iter().all(|t| super::text::py_split(t).next().is_none());
    let (r1, r2, rl) = if empty(&hyp) || empty(&reference) { (0.0, 0.0, 0.0) } else { rouge_chinese_f(&hyp, &reference) };
    let p: Vec<char> = pred.chars().collect();
    let l: Vec<char> = label.chars().collect();
    let bleu = sentence_bleu4_method3(&l, &p);
    [r1, r2, rl, bleu].map(|x| python_round(x * 100.0, 4))
}

/// The mean of [`sample`] over a corpus, as `np.mean` (0 for an empty corpus).
pub fn corpus(preds: &[&str], labels: &[&str]) -> [f64; 4] {
    let per = super::sacrebleu::per_segment(preds, &[labels.to_vec()], |p, l| sample(p, l[0]));
    let n = per.len().max(1) as f64;
    // np.mean, to the last bit
    std::array::from_fn(|k| crate::stats::numpy_sum(&per.iter().map(|s| s[k]).collect::<Vec<_>>()) / n)
}
