//! Diversity of a model's outputs: distinct-n (unique n-grams over all n-grams, Li et al. 2016)
//! and self-BLEU (each output scored with sacrebleu's sentence BLEU against all the others).
//!
//! Text is tokenized with sacrebleu's `zh` tokenizer, which splits Chinese characters and applies
//! 13a to everything else, so one definition serves English and Chinese outputs.

use super::sacrebleu::{self, BleuOptions, Tokenize};
use std::collections::HashSet;

fn tokens(text: &str) -> Vec<String> {
    sacrebleu::tokenize(text, Tokenize::Zh).split(' ').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// distinct-n over a set of outputs: unique n-grams / total n-grams (0 when there are none).
pub fn distinct(outputs: &[&str], n: usize) -> f64 {
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut total = 0usize;
    for o in outputs {
        let t = tokens(o);
        if t.len() >= n {
            for w in t.windows(n) {
                total += 1;
                seen.insert(w.to_vec());
            }
        }
    }
    if total == 0 { 0.0 } else { seen.len() as f64 / total as f64 }
}

/// Per-output statistics for distinct-n in a suite: `[n-gram count, hash₁, hash₂, …]` with one
/// 52-bit hash per distinct n-gram of the output, so the corpus value (and its bootstrap) is the
/// number of distinct hashes over the summed counts.
pub fn distinct_stats(output: &str, n: usize) -> Vec<f64> {
    let t = tokens(output);
    let mut hashes = HashSet::new();
    let mut count = 0usize;
    if t.len() >= n {
        for w in t.windows(n) {
            count += 1;
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for tok in w {
                for b in tok.bytes().chain(std::iter::once(0xff)) {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x1000_0000_01b3);
                }
            }
            hashes.insert(h >> 12);
        }
    }
    let mut v = vec![count as f64];
    let mut hs: Vec<u64> = hashes.into_iter().collect();
    hs.sort_unstable();
    v.extend(hs.into_iter().map(|h| h as f64));
    v
}

/// Corpus distinct-n from [`distinct_stats`] vectors.
pub fn distinct_from_stats(stats: &[&[f64]]) -> f64 {
    let total: f64 = stats.iter().map(|s| s[0]).sum();
    let unique: HashSet<u64> = stats.iter().flat_map(|s| s[1..].iter().map(|h| *h as u64)).collect();
    if total == 0.0 { 0.0 } else { unique.len() as f64 / total }
}

/// Mean sentence BLEU (0–100) of each output against all the others (0 with fewer than two).
pub fn self_bleu(outputs: &[&str]) -> f64 {
    if outputs.len() < 2 {
        return 0.0;
    }
    let o = BleuOptions { tokenize: Tokenize::Zh, lowercase: false, smooth: super::sacrebleu::Smooth::Exp };
    let hyps: Vec<&str> = outputs.to_vec();
    let idx: Vec<String> = (0..outputs.len()).map(|i| i.to_string()).collect();
    let idx_refs: Vec<&str> = idx.iter().map(String::as_str).collect();
    let scores = sacrebleu::per_segment(&idx_refs, &[], |i, _| {
        let i: usize = i.parse().expect("index");
        let others: Vec<&str> = hyps.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| *s).collect();
        sacrebleu::sentence_bleu(hyps[i], &others, &o).score
    });
    scores.iter().sum::<f64>() / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_counts() {
        let outs = ["the cat sat", "the cat ran"];
        assert!((distinct(&outs, 1) - 4.0 / 6.0).abs() < 1e-12);
        assert!((distinct(&outs, 2) - 3.0 / 4.0).abs() < 1e-12);
        let s: Vec<Vec<f64>> = outs.iter().map(|o| distinct_stats(o, 2)).collect();
        let refs: Vec<&[f64]> = s.iter().map(Vec::as_slice).collect();
        assert!((distinct_from_stats(&refs) - 0.75).abs() < 1e-12);
        assert!((distinct(&["你好世界", "你好"], 1) - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn self_bleu_of_identical_outputs_is_100() {
        assert!((self_bleu(&["a b c d e", "a b c d e"]) - 100.0).abs() < 1e-9);
        assert!(self_bleu(&["a b c d e", "v w x y z"]) < 1e-6);
    }
}
