//! ROUGE exactly as Google's `rouge-score` computes it: its tokenizer (lower-case, anything but
//! `[a-z0-9]` becomes a space), NLTK's Porter stemmer on tokens longer than three characters,
//! n-gram overlap, LCS, and summary-level union LCS for `rougeLsum` (sentences split on "\n").
//!
//! Scores are per sample; a corpus figure is the mean of the samples' precision, recall and
//! F-measure, as rouge-score users report it.

use std::cell::RefCell;
use rustc_hash::FxHashMap as HashMap;

/// A ROUGE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RougeType {
    /// `rougeN`: n-gram overlap.
    N(usize),
    /// `rougeL`: longest common subsequence over the whole text.
    L,
    /// `rougeLsum`: summary-level union LCS over newline-separated sentences.
    Lsum,
}

impl RougeType {
    pub fn name(&self) -> String {
        match self {
            RougeType::N(n) => format!("rouge{n}"),
            RougeType::L => "rougeL".into(),
            RougeType::Lsum => "rougeLsum".into(),
        }
    }
}

impl std::str::FromStr for RougeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rougeL" => Ok(RougeType::L),
            "rougeLsum" => Ok(RougeType::Lsum),
            _ => match s.strip_prefix("rouge").and_then(|d| d.parse::<usize>().ok()) {
                Some(n) if (1..=9).contains(&n) && s.len() == 6 => Ok(RougeType::N(n)),
                _ => Err(format!("unknown ROUGE type {s:?}; expected rouge1 … rouge9, rougeL or rougeLsum")),
            },
        }
    }
}

/// Precision, recall and F-measure (0–1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

fn prf(precision: f64, recall: f64) -> Prf {
    let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Prf { precision, recall, fmeasure }
}

thread_local! {
    static STEMS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::default());
}

/// rouge-score's `tokenize(text, stemmer)`.
pub fn tokenize(text: &str, stem: bool) -> Vec<String> {
    let lower = super::text::py_lower(text);
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        if cur.is_empty() {
            return;
        }
        let tok = std::mem::take(cur);
        if stem && tok.len() > 3 {
            let s = STEMS.with(|m| {
                let mut m = m.borrow_mut();
                if let Some(s) = m.get(&tok) {
                    return s.clone();
                }
                let s = super::porter::stem(&tok);
                if m.len() < 1 << 20 {
                    m.insert(tok.clone(), s.clone());
                }
                s
            });
            // rouge-score drops tokens that stemming left empty or non-alphanumeric.
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                tokens.push(s);
            }
        } else {
            tokens.push(tok);
        }
    };
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cur.push(c);
        } else {
            flush(&mut cur);
        }
    }
    flush(&mut cur);
    tokens
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut m = HashMap::default();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> Prf {
    let t = ngrams(target, n);
    let p = ngrams(prediction, n);
    let overlap: u64 = t.iter().map(|(k, c)| (*c).min(p.get(k).copied().unwrap_or(0))).sum();
    let tc: u64 = t.values().sum();
    let pc: u64 = p.values().sum();
    prf(overlap as f64 / pc.max(1) as f64, overlap as f64 / tc.max(1) as f64)
}

/// Length of the longest common subsequence of two token sequences (two DP rows).
pub fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn score_lcs(target: &[String], prediction: &[String]) -> Prf {
    if target.is_empty() || prediction.is_empty() {
        return Prf::default();
    }
    let l = lcs_len(target, prediction) as f64;
    prf(l / prediction.len() as f64, l / target.len() as f64)
}

/// Indices into `r` of one LCS of `r` and `c`, read back exactly as rouge-score does.
fn lcs_indices(r: &[String], c: &[String]) -> Vec<usize> {
    let cols = c.len() + 1;
    let mut t = vec![0u32; (r.len() + 1) * cols];
    for i in 1..=r.len() {
        for j in 1..=c.len() {
            t[i * cols + j] = if r[i - 1] == c[j - 1] { t[(i - 1) * cols + j - 1] + 1 } else { t[(i - 1) * cols + j].max(t[i * cols + j - 1]) };
        }
    }
    let (mut i, mut j) = (r.len(), c.len());
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i * cols + j - 1] > t[(i - 1) * cols + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out.reverse();
    out
}

fn score_summary_lcs(refs: &[Vec<String>], cands: &[Vec<String>]) -> Prf {
    if refs.is_empty() || cands.is_empty() {
        return Prf::default();
    }
    let m: usize = refs.iter().map(Vec::len).sum();
    let n: usize = cands.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return Prf::default();
    }
    let mut cnt_r: HashMap<&str, i64> = HashMap::default();
    let mut cnt_c: HashMap<&str, i64> = HashMap::default();
    for s in refs {
        for t in s {
            *cnt_r.entry(t).or_insert(0) += 1;
        }
    }
    for s in cands {
        for t in s {
            *cnt_c.entry(t).or_insert(0) += 1;
        }
    }
    let mut hits = 0usize;
    for r in refs {
        let mut union: Vec<usize> = cands.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for i in union {
            let t = r[i].as_str();
            let (c, rr) = (cnt_c.get(t).copied().unwrap_or(0), cnt_r.get(t).copied().unwrap_or(0));
            if c > 0 && rr > 0 {
                hits += 1;
                *cnt_c.get_mut(t).expect("present") -= 1;
                *cnt_r.get_mut(t).expect("present") -= 1;
            }
        }
    }
    prf(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// rouge-score's `RougeScorer(types, use_stemmer=stem).score(target, prediction)`.
pub fn score(target: &str, prediction: &str, types: &[RougeType], stem: bool) -> Vec<Prf> {
    let needs_tokens = types.iter().any(|t| *t != RougeType::Lsum);
    let (tt, pt) = if needs_tokens { (tokenize(target, stem), tokenize(prediction, stem)) } else { (Vec::new(), Vec::new()) };
    types
        .iter()
        .map(|t| match t {
            RougeType::N(n) => score_ngrams(&tt, &pt, *n),
            RougeType::L => score_lcs(&tt, &pt),
            RougeType::Lsum => {
                let sents = |s: &str| s.split('\n').filter(|x| !x.is_empty()).map(|x| tokenize(x, stem)).collect::<Vec<_>>();
                score_summary_lcs(&sents(target), &sents(prediction))
            }
        })
        .collect()
}

/// rouge-score's `score_multi(targets, prediction)`: per type, the target with the highest
/// F-measure (the first on ties).
pub fn score_multi(targets: &[&str], prediction: &str, types: &[RougeType], stem: bool) -> Vec<Prf> {
    let all: Vec<Vec<Prf>> = targets.iter().map(|t| score(t, prediction, types, stem)).collect();
    (0..types.len())
        .map(|k| {
            let mut best = 0;
            for (i, s) in all.iter().enumerate() {
                if s[k].fmeasure > all[best][k].fmeasure {
                    best = i;
                }
            }
            all.get(best).map_or(Prf::default(), |s| s[k])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer() {
        assert_eq!(tokenize("The Quick-brown fox's 2nd", false), ["the", "quick", "brown", "fox", "s", "2nd"]);
    }

    #[test]
    fn readme_example() {
        // rouge-score README: scorer.score('The quick brown fox jumps over the lazy dog',
        //                                   'The quick brown dog jumps on the log.')
        let s = score("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.", &[RougeType::N(1), RougeType::L], true);
        assert!((s[0].precision - 0.75).abs() < 1e-12 && (s[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[1].fmeasure - 0.5882352941176471).abs() < 1e-12);
    }
}
