//! BLEU and chrF exactly as sacrebleu 2.x computes them, tokenizers included.
//!
//! Each segment is reduced to integer statistics (n-gram matches and totals, lengths); corpus
//! scores are computed from their sums, as sacrebleu does, which also lets the bootstrap and the
//! gate resample segments without re-tokenizing. The `zh` tokenizer keeps sacrebleu's quirk of
//! two mistyped range ends (`'\u20000'`, `'\u2f800'` are two-character strings in Python), which
//! widens two of its "Chinese character" ranges; matching it is what makes scores equal.

use super::text::{is_py_space, py_lower, py_rstrip, py_split, py_strip};
use regex::Regex;
use rustc_hash::FxHashMap as HashMap;
use std::sync::OnceLock;

/// sacrebleu's BLEU tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenize {
    /// mteval-v13a (the default).
    Thirteen,
    /// mteval-v14 international (Unicode punctuation and symbols).
    Intl,
    /// Chinese characters split, the rest as 13a.
    Zh,
    /// Every character a token.
    Char,
    /// Whitespace only.
    None,
}

impl std::str::FromStr for Tokenize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "13a" => Tokenize::Thirteen,
            "intl" => Tokenize::Intl,
            "zh" => Tokenize::Zh,
            "char" => Tokenize::Char,
            "none" => Tokenize::None,
            _ => return Err(format!("unknown tokenizer {s:?}; expected 13a, intl, zh, char or none")),
        })
    }
}

impl Tokenize {
    /// The name sacrebleu gives it (`--tokenize`, and `tok:` in signatures).
    pub fn name(self) -> &'static str {
        match self {
            Tokenize::Thirteen => "13a",
            Tokenize::Intl => "intl",
            Tokenize::Zh => "zh",
            Tokenize::Char => "char",
            Tokenize::None => "none",
        }
    }
}

/// The sacrebleu release whose scores this module reproduces; signatures name it, as sacrebleu's
/// own do, so a score reported with one can be compared with sacrebleu's.
pub const SACREBLEU_VERSION: &str = "2.6.0";

fn case(lowercase: bool) -> &'static str {
    if lowercase { "lc" } else { "mixed" }
}

/// The common post-tokenizer of `13a` and `zh`: sacrebleu's four regex substitutions, each a
/// left-to-right scan with the same non-overlapping match semantics, then whitespace collapsed.
fn regexp_tokenize(line: &str) -> String {
    // 1. `([\{-~\[-` -&\(-\+:-@/])` → ` \1 `
    let is_punct = |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut a: Vec<char> = Vec::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_punct(c) {
            a.extend([' ', c, ' ']);
        } else {
            a.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let dot = |c: char| c == '.' || c == ',';
    // A two-character pattern `(x)(y)` replaced by `emit(x, y)`, scanning left to right.
    let pass = |src: &[char], first: &dyn Fn(char) -> bool, second: &dyn Fn(char) -> bool, emit: &dyn Fn(&mut Vec<char>, char, char)| {
        let mut out = Vec::with_capacity(src.len() + src.len() / 4);
        let mut i = 0;
        while i < src.len() {
            if i + 1 < src.len() && first(src[i]) && second(src[i + 1]) {
                emit(&mut out, src[i], src[i + 1]);
                i += 2;
            } else {
                out.push(src[i]);
                i += 1;
            }
        }
        out
    };
    // 2. `([^0-9])([\.,])` → `\1 \2 `
    let b = pass(&a, &|c| !digit(c), &dot, &|o, x, y| o.extend([x, ' ', y, ' ']));
    // 3. `([\.,])([^0-9])` → ` \1 \2`
    let c = pass(&b, &dot, &|c| !digit(c), &|o, x, y| o.extend([' ', x, ' ', y]));
    // 4. `([0-9])(-)` → `\1 \2 `
    let d = pass(&c, &digit, &|c| c == '-', &|o, x, y| o.extend([x, ' ', y, ' ']));
    let s: String = d.into_iter().collect();
    py_split(&s).collect::<Vec<_>>().join(" ")
}

fn tokenize_13a(line: &str) -> String {
    let mut l = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if l.contains('&') {
        l = l.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    regexp_tokenize(&format!(" {l} "))
}

/// The `regex` module's `\p{P}`, `\p{S}` and `\p{N}`, which sacrebleu's intl tokenizer uses: its
/// Unicode tables are pinned here (`data/intl_classes.txt`, written by
/// tests/goldens/make_unicode_goldens.py) rather than taken from the Rust regex crate's, which
/// lag a Unicode version behind (U+20C1 SAUDI RIYAL SIGN is a symbol in Unicode 17).
const INTL_CLASSES: &str = include_str!("data/intl_classes.txt");

/// `\p{class}` of [`INTL_CLASSES`] as a regex character class, negated with `not`.
fn intl_class(class: char, not: bool) -> String {
    let set: String = crate::util::pinned_ranges(INTL_CLASSES, class).iter().map(|&(a, b)| format!("\\x{{{a:X}}}-\\x{{{b:X}}}")).collect();
    format!("[{}{set}]", if not { "^" } else { "" })
}

fn tokenize_intl(line: &str) -> String {
    static R1: OnceLock<Regex> = OnceLock::new();
    static R2: OnceLock<Regex> = OnceLock::new();
    static R3: OnceLock<Regex> = OnceLock::new();
    let compile = |pattern: String| Regex::new(&pattern).expect("valid regex");
    let r1 = R1.get_or_init(|| compile(format!("({})({})", intl_class('N', true), intl_class('P', false))));
    let r2 = R2.get_or_init(|| compile(format!("({})({})", intl_class('P', false), intl_class('N', true))));
    let r3 = R3.get_or_init(|| compile(format!("({})", intl_class('S', false))));
    let s = r1.replace_all(line, "$1 $2 ");
    let s = r2.replace_all(&s, " $1 $2");
    let s = r3.replace_all(&s, " $1 ");
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// sacrebleu's `_is_chinese_char`, with its two widened ranges.
fn is_chinese_char(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x3400, 0x4db5),
        (0x4e00, 0x9fa5),
        (0x9fa6, 0x9fbb),
        (0xf900, 0xfa2d),
        (0xfa30, 0xfa6a),
        (0xfa70, 0xfad9),
        // Python's '\u20000' <= c <= '\u2a6d6' for one character c: U+2001..=U+2A6D.
        (0x2001, 0x2a6d),
        // '\u2f800' <= c <= '\u2fa1d': U+2F81..=U+2FA1.
        (0x2f81, 0x2fa1),
        (0xff00, 0xffef),
        (0x2e80, 0x2eff),
        (0x3000, 0x303f),
        (0x31c0, 0x31ef),
        (0x2f00, 0x2fdf),
        (0x2ff0, 0x2fff),
        (0x3100, 0x312f),
        (0x31a0, 0x31bf),
        (0xfe10, 0xfe1f),
        (0xfe30, 0xfe4f),
        (0x2600, 0x26ff),
        (0x2700, 0x27bf),
        (0x3200, 0x32ff),
        (0x3300, 0x33ff),
    ];
    let u = c as u32;
    RANGES.iter().any(|&(a, b)| a <= u && u <= b)
}

fn tokenize_zh(line: &str) -> String {
    let mut s = String::with_capacity(line.len() * 2);
    for c in py_strip(line).chars() {
        if is_chinese_char(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    regexp_tokenize(&s)
}

/// Tokenizes one segment as sacrebleu's BLEU does (after `--lowercase` and `rstrip`).
pub fn tokenize(line: &str, tok: Tokenize) -> String {
    match tok {
        Tokenize::Thirteen => tokenize_13a(line),
        Tokenize::Intl => tokenize_intl(line),
        Tokenize::Zh => tokenize_zh(line),
        Tokenize::Char => {
            let mut s = String::with_capacity(line.len() * 2);
            for (i, c) in line.chars().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push(c);
            }
            s
        }
        Tokenize::None => line.to_string(),
    }
}

pub const MAX_ORDER: usize = 4;

/// BLEU options (sacrebleu defaults: 13a, mixed case, `exp` smoothing).
#[derive(Debug, Clone, Copy)]
pub struct BleuOptions {
    pub tokenize: Tokenize,
    pub lowercase: bool,
    /// How precisions without a match are smoothed.
    pub smooth: Smooth,
}

impl BleuOptions {
    /// sacrebleu's signature of a corpus BLEU with `nrefs` references per segment (no effective
    /// order, as `corpus_bleu`).
    pub fn signature(&self, nrefs: usize) -> String {
        format!("nrefs:{nrefs}|case:{}|eff:no|tok:{}|smooth:{}|version:{SACREBLEU_VERSION}", case(self.lowercase), self.tokenize.name(), self.smooth.name())
    }
}

impl Default for BleuOptions {
    fn default() -> Self {
        BleuOptions { tokenize: Tokenize::Thirteen, lowercase: false, smooth: Smooth::Exp }
    }
}

/// A segment's statistics: `[hyp_len, ref_len, correct_1..4, total_1..4]`.
pub type BleuStats = [u64; 2 + 2 * MAX_ORDER];

fn preprocess_bleu(s: &str, o: &BleuOptions) -> String {
    let lowered;
    let s = if o.lowercase {
        lowered = py_lower(s);
        &lowered
    } else {
        s
    };
    tokenize(py_rstrip(s), o.tokenize)
}

/// Counts of the 1..=4-grams of `ids`, each n-gram packed into one integer (ids are ≥ 1, so
/// n-grams of different lengths never collide).
fn word_ngrams(ids: &[u32]) -> HashMap<u128, u64> {
    let mut m: HashMap<u128, u64> = HashMap::with_capacity_and_hasher(ids.len() * MAX_ORDER, Default::default());
    for n in 1..=MAX_ORDER {
        for w in ids.windows(n) {
            let key = w.iter().fold(0u128, |k, &id| (k << 32) | u128::from(id));
            *m.entry(key).or_insert(0) += 1;
        }
    }
    m
}

/// Maps each whitespace-separated token of `text` to an id ≥ 1 in `vocab`.
fn intern<'a>(text: &'a str, vocab: &mut HashMap<&'a str, u32>) -> Vec<u32> {
    py_split(text)
        .map(|t| {
            let next = vocab.len() as u32 + 1;
            *vocab.entry(t).or_insert(next)
        })
        .collect()
}

/// Statistics of one hypothesis against its references.
pub fn bleu_stats(hyp: &str, refs: &[&str], o: &BleuOptions) -> BleuStats {
    let ref_toks: Vec<String> = refs.iter().map(|r| preprocess_bleu(r, o)).collect();
    let hyp_tok = preprocess_bleu(hyp, o);
    let mut vocab: HashMap<&str, u32> = HashMap::default();
    let ref_ids: Vec<Vec<u32>> = ref_toks.iter().map(|r| intern(r, &mut vocab)).collect();
    let hyp_ids = intern(&hyp_tok, &mut vocab);
    let mut ref_max: HashMap<u128, u64> = HashMap::default();
    for r in &ref_ids {
        for (k, v) in word_ngrams(r) {
            let e = ref_max.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    let hyp_len = hyp_ids.len() as u64;
    // The closest reference length; ties go to the shorter reference.
    let mut closest: Option<(u64, u64)> = None;
    for r in &ref_ids {
        let len = r.len() as u64;
        let diff = hyp_len.abs_diff(len);
        closest = match closest {
            None => Some((diff, len)),
            Some((d, l)) if diff < d || (diff == d && len < l) => Some((diff, len)),
            keep => keep,
        };
    }
    let mut st: BleuStats = [0; 2 + 2 * MAX_ORDER];
    st[0] = hyp_len;
    st[1] = closest.map_or(0, |c| c.1);
    for (key, count) in word_ngrams(&hyp_ids) {
        let n = (128 - key.leading_zeros() as usize).div_ceil(32) - 1; // order − 1
        st[2 + MAX_ORDER + n] += count;
        if let Some(r) = ref_max.get(&key) {
            st[2 + n] += count.min(*r);
        }
    }
    st
}

/// A BLEU score with its parts (0–100 like sacrebleu).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    pub score: f64,
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    pub precisions: [f64; MAX_ORDER],
}

fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// sacrebleu's smoothing of n-gram precisions that have no match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smooth {
    /// mteval's: the k-th order without a match counts as 1 / 2^k matches (the default).
    Exp,
    /// A precision without a match counts as this many matches (sacrebleu's default 0.1).
    Floor(f64),
    /// This many added to the matches and totals of orders 2 and up (sacrebleu's default 1).
    AddK(f64),
    /// None: a precision without a match makes BLEU 0.
    None,
}

impl Smooth {
    /// From sacrebleu's `--smooth-method` and `--smooth-value` (the method's default when absent).
    pub fn parse(method: &str, value: Option<f64>) -> Result<Smooth, String> {
        let value_for = |default: f64| -> Result<f64, String> {
            let v = value.unwrap_or(default);
            if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(format!("smooth value {v} must be a number ≥ 0")) }
        };
        match method {
            "exp" | "none" if value.is_some() => Err(format!("smooth method {method:?} takes no value; only floor and add-k do")),
            "exp" => Ok(Smooth::Exp),
            "none" => Ok(Smooth::None),
            "floor" => Ok(Smooth::Floor(value_for(0.1)?)),
            "add-k" => Ok(Smooth::AddK(value_for(1.0)?)),
            _ => Err(format!("unknown smooth method {method:?}; expected exp, floor, add-k or none")),
        }
    }

    /// As sacrebleu's signatures write it: `exp`, `floor[0.10]`, `add-k[1.00]`, `none`.
    pub fn name(self) -> String {
        match self {
            Smooth::Exp => "exp".into(),
            Smooth::Floor(v) => format!("floor[{v:.2}]"),
            Smooth::AddK(v) => format!("add-k[{v:.2}]"),
            Smooth::None => "none".into(),
        }
    }
}

/// sacrebleu's `compute_bleu` with `exp` smoothing.
pub fn bleu_from_stats(st: &[u64], effective_order: bool) -> BleuScore {
    bleu_from_stats_smoothed(st, effective_order, Smooth::Exp)
}

/// sacrebleu's `compute_bleu`.
pub fn bleu_from_stats_smoothed(st: &[u64], effective_order: bool, smooth: Smooth) -> BleuScore {
    let (sys_len, ref_len) = (st[0], st[1]);
    let mut correct = [0.0; MAX_ORDER];
    let mut total = [0.0; MAX_ORDER];
    for n in 0..MAX_ORDER {
        (correct[n], total[n]) = (st[2 + n] as f64, st[2 + MAX_ORDER + n] as f64);
    }
    let bp = if sys_len < ref_len { if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 } } else { 1.0 };
    let mut precisions = [0.0; MAX_ORDER];
    if correct.iter().all(|&c| c == 0.0) {
        return BleuScore { score: 0.0, bp, sys_len, ref_len, precisions };
    }
    let mut mteval = 1.0;
    let mut eff_order = MAX_ORDER;
    for n in 1..=MAX_ORDER {
        if let Smooth::AddK(k) = smooth
            && n > 1
        {
            correct[n - 1] += k;
            total[n - 1] += k;
        }
        if total[n - 1] == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct[n - 1] == 0.0 {
            match smooth {
                Smooth::Exp => {
                    mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (mteval * total[n - 1]);
                }
                Smooth::Floor(v) => precisions[n - 1] = 100.0 * v / total[n - 1],
                Smooth::AddK(_) | Smooth::None => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
        }
    }
    let sum: f64 = precisions[..eff_order].iter().map(|&p| my_log(p)).sum();
    BleuScore { score: bp * (sum / eff_order as f64).exp(), bp, sys_len, ref_len, precisions }
}

/// Sums segment statistics.
pub fn sum_stats(all: impl IntoIterator<Item = impl AsRef<[u64]>>, width: usize) -> Vec<u64> {
    let mut acc = vec![0u64; width];
    for s in all {
        for (a, x) in acc.iter_mut().zip(s.as_ref()) {
            *a += x;
        }
    }
    acc
}

/// sacrebleu `corpus_bleu(hyps, [refs_1, refs_2, …])`: `refs[k][i]` is reference k of segment i.
pub fn corpus_bleu(hyps: &[&str], refs: &[Vec<&str>], o: &BleuOptions) -> BleuScore {
    let stats = per_segment(hyps, refs, |h, r| bleu_stats(h, r, o));
    bleu_from_stats_smoothed(&sum_stats(&stats, 2 + 2 * MAX_ORDER), false, o.smooth)
}

/// sacrebleu `sentence_bleu(hyp, refs)` (effective order).
pub fn sentence_bleu(hyp: &str, refs: &[&str], o: &BleuOptions) -> BleuScore {
    bleu_from_stats_smoothed(&bleu_stats(hyp, refs, o), true, o.smooth)
}

/// Maps every segment through `f` using all cores, keeping order.
pub fn per_segment<T: Send>(hyps: &[&str], refs: &[Vec<&str>], f: impl Fn(&str, &[&str]) -> T + Sync) -> Vec<T> {
    let n = hyps.len();
    let threads = std::thread::available_parallelism().map_or(1, |x| x.get()).min(n.max(1)).max(1);
    let chunk = n.div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                scope.spawn(move || {
                    (start..end)
                        .map(|i| {
                            let r: Vec<&str> = refs.iter().map(|k| k[i]).collect();
                            f(hyps[i], &r)
                        })
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("metric worker panicked")).collect()
    })
}

// ---------------------------------------------------------------------------------------------
// chrF / chrF++

pub const CHAR_ORDER: usize = 6;
pub const BETA: f64 = 2.0;

/// chrF options: `word_order` 0 (chrF) or 2 (chrF++).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChrfOptions {
    pub word_order: usize,
    pub lowercase: bool,
}

impl ChrfOptions {
    /// sacrebleu's signature of a corpus chrF (character order 6, β = 2, whitespace dropped).
    pub fn signature(&self, nrefs: usize) -> String {
        format!("nrefs:{nrefs}|case:{}|eff:yes|nc:6|nw:{}|space:no|version:{SACREBLEU_VERSION}", case(self.lowercase), self.word_order)
    }
}

const PUNCTS: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// sacrebleu's `_remove_punctuation`: one punctuation mark split off the end, else the start.
fn chrf_words(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut chars = w.char_indices();
        let first = chars.next();
        if w.chars().nth(1).is_none() {
            out.push(w);
            continue;
        }
        let last = w.char_indices().next_back().expect("non-empty");
        if PUNCTS.contains(last.1) {
            out.push(&w[..last.0]);
            out.push(&w[last.0..]);
        } else if let Some((_, c)) = first.filter(|(_, c)| PUNCTS.contains(*c)) {
            let k = c.len_utf8();
            out.push(&w[..k]);
            out.push(&w[k..]);
        } else {
            out.push(w);
        }
    }
    out
}

/// Character n-gram counters (orders 1..=6, whitespace removed) and word n-gram counters, both
/// borrowing from the sentence's characters and words.
struct ChrfNgrams {
    chars: Vec<HashMap<u128, u64>>,
    words: Vec<HashMap<String, u64>>,
}

fn chrf_ngrams(line: &[char], sent: &str, o: &ChrfOptions) -> ChrfNgrams {
    // Up to six characters of 21 bits each (+1, so lengths never collide) pack into a u128.
    let chars = (1..=CHAR_ORDER)
        .map(|n| {
            let mut m: HashMap<u128, u64> = HashMap::with_capacity_and_hasher(line.len(), Default::default());
            if line.len() >= n {
                for w in line.windows(n) {
                    *m.entry(w.iter().fold(0u128, |k, &c| (k << 21) | u128::from(c as u32 + 1))).or_insert(0) += 1;
                }
            }
            m
        })
        .collect();
    let mut words = Vec::new();
    if o.word_order > 0 {
        let ws = chrf_words(sent);
        for n in 1..=o.word_order {
            let mut m: HashMap<String, u64> = HashMap::default();
            if ws.len() >= n {
                for w in ws.windows(n) {
                    // sacrebleu joins word n-grams with spaces, so a word n-gram is its joined string.
                    *m.entry(w.join(" ")).or_insert(0) += 1;
                }
            }
            words.push(m);
        }
    }
    ChrfNgrams { chars, words }
}

fn no_space_chars(s: &str) -> Vec<char> {
    s.chars().filter(|c| !is_py_space(*c)).collect()
}

fn match_stats<K: std::hash::Hash + Eq>(hyp: &HashMap<K, u64>, r: &HashMap<K, u64>, out: &mut Vec<u64>) {
    let (mut matched, mut hyp_count) = (0, 0);
    for (ng, c) in hyp {
        hyp_count += c;
        if let Some(rc) = r.get(ng) {
            matched += (*c).min(*rc);
        }
    }
    out.push(if r.is_empty() { 0 } else { hyp_count });
    out.push(r.values().sum());
    out.push(matched);
}

/// sacrebleu's `_compute_f_score` over `[hyp, ref, match]` triplets.
pub fn chrf_from_stats(st: &[u64]) -> f64 {
    let factor = BETA * BETA;
    let (mut avg_p, mut avg_r, mut eff) = (0.0, 0.0, 0usize);
    for t in st.chunks(3) {
        let (h, r, m) = (t[0], t[1], t[2]);
        if h > 0 && r > 0 {
            avg_p += m as f64 / h as f64;
            avg_r += m as f64 / r as f64;
            eff += 1;
        }
    }
    if eff == 0 {
        return 0.0;
    }
    avg_p /= eff as f64;
    avg_r /= eff as f64;
    if avg_p + avg_r != 0.0 {
        // in sacrebleu's order of operations: the best of several references is chosen by this
        // value, so a rounding difference would pick another reference on a tie
        let score = (1.0 + factor) * avg_p * avg_r / (factor * avg_p + avg_r);
        100.0 * score
    } else {
        0.0
    }
}

/// Statistics of one hypothesis: those of the reference with the best chrF.
pub fn chrf_stats(hyp: &str, refs: &[&str], o: &ChrfOptions) -> Vec<u64> {
    let pre = |s: &str| if o.lowercase { py_lower(s) } else { s.to_string() };
    let hyp = pre(hyp);
    let hyp_chars = no_space_chars(&hyp);
    let h = chrf_ngrams(&hyp_chars, &hyp, o);
    let mut best: Option<(f64, Vec<u64>)> = None;
    for r in refs {
        let r = pre(r);
        let r_chars = no_space_chars(&r);
        let r = chrf_ngrams(&r_chars, &r, o);
        let mut st = Vec::with_capacity(3 * (CHAR_ORDER + o.word_order));
        for (hc, rc) in h.chars.iter().zip(&r.chars) {
            match_stats(hc, rc, &mut st);
        }
        for (hw, rw) in h.words.iter().zip(&r.words) {
            match_stats(hw, rw, &mut st);
        }
        let f = chrf_from_stats(&st);
        if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
            best = Some((f, st));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| vec![0; 3 * (CHAR_ORDER + o.word_order)])
}

/// sacrebleu `corpus_chrf(hyps, [refs_1, …], word_order=…)`.
pub fn corpus_chrf(hyps: &[&str], refs: &[Vec<&str>], o: &ChrfOptions) -> f64 {
    let stats = per_segment(hyps, refs, |h, r| chrf_stats(h, r, o));
    chrf_from_stats(&sum_stats(&stats, 3 * (CHAR_ORDER + o.word_order)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signatures as sacrebleu 2.6.0 prints them (`BLEU(**options).get_signature()` after a score).
    #[test]
    fn signatures_are_sacrebleus() {
        let bleu = |tokenize: &str, lowercase: bool, nrefs: usize| BleuOptions { tokenize: tokenize.parse().unwrap(), lowercase, smooth: Smooth::Exp }.signature(nrefs);
        assert_eq!(bleu("13a", false, 1), "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
        assert_eq!(bleu("zh", true, 1), "nrefs:1|case:lc|eff:no|tok:zh|smooth:exp|version:2.6.0");
        assert_eq!(bleu("intl", false, 1), "nrefs:1|case:mixed|eff:no|tok:intl|smooth:exp|version:2.6.0");
        assert_eq!(bleu("char", false, 1), "nrefs:1|case:mixed|eff:no|tok:char|smooth:exp|version:2.6.0");
        assert_eq!(bleu("none", false, 1), "nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:2.6.0");
        assert_eq!(bleu("13a", false, 2), "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
        for (word_order, want) in [(0, "nw:0"), (1, "nw:1"), (2, "nw:2")] {
            assert_eq!(ChrfOptions { word_order, lowercase: false }.signature(1), format!("nrefs:1|case:mixed|eff:yes|nc:6|{want}|space:no|version:2.6.0"));
        }
    }

    #[test]
    fn thirteen_a() {
        assert_eq!(tokenize("Hello, world! It's 3.5-4 (ok).", Tokenize::Thirteen), "Hello , world ! It's 3.5 - 4 ( ok ) .");
        assert_eq!(tokenize("a &amp; b &lt;c&gt;", Tokenize::Thirteen), "a & b < c >");
    }

    #[test]
    fn scans_equal_the_regexes() {
        // The four substitutions done with the regex crate, for comparison.
        let by_regex = |line: &str| {
            let s = Regex::new(r"([\{-~\[-` -&\(-\+:-@/])").unwrap().replace_all(line, " $1 ");
            let s = Regex::new(r"([^0-9])([\.,])").unwrap().replace_all(&s, "$1 $2 ");
            let s = Regex::new(r"([\.,])([^0-9])").unwrap().replace_all(&s, " $1 $2");
            let s = Regex::new(r"([0-9])(-)").unwrap().replace_all(&s, "$1 $2 ");
            py_split(&s).collect::<Vec<_>>().join(" ")
        };
        for line in ["a.,b", "1.,2", "x..y", "3.5-4.", ".,.,", "a,1,b", "9--9", "é.ü,ß", "1-2-3", "(a).[b],{c}", "\"quoted\" 'x' $5.00", "....", ",,,,1"] {
            assert_eq!(regexp_tokenize(line), by_regex(line), "{line:?}");
        }
    }

    #[test]
    fn intl_classes_are_the_regex_modules() {
        // sacrebleu 2.6.0 with regex 2026.5.9 (Unicode 17): U+20C1 is a symbol; "3.5" keeps its
        // point between digits, "x." loses it
        assert_eq!(tokenize("a\u{20c1}5 3.5 x. «y»", Tokenize::Intl), "a \u{20c1} 5 3.5 x . « y »");
        // the pinned classes agree with the regex crate's on what both Unicode versions know
        let assigned = Regex::new(r"^\P{Cn}$").unwrap();
        for (class, rust) in [('P', r"\p{P}"), ('S', r"\p{S}"), ('N', r"\p{N}")] {
            let ours = Regex::new(&format!("^{}$", intl_class(class, false))).unwrap();
            let theirs = Regex::new(&format!("^{rust}$")).unwrap();
            let differ: Vec<u32> = (0..0x110000u32).filter_map(char::from_u32).filter(|c| {
                let t = c.to_string();
                ours.is_match(&t) != theirs.is_match(&t) && assigned.is_match(&t)
            }).map(|c| c as u32).collect();
            assert!(differ.is_empty(), "{class}: {differ:x?}");
        }
    }

    #[test]
    fn chrf_breaks_reference_ties_as_sacrebleu() {
        // both references score 5.208333333333334 in sacrebleu's arithmetic, so it keeps the
        // first; computed in another order the first is an ulp lower and the second one won
        let o = ChrfOptions { word_order: 0, lowercase: false };
        let refs = vec![vec!["$", "'$%&"], vec!["", "&lt;Aéß“…€-éa٣中1?:"]];
        assert_eq!(corpus_chrf(&["", "é’€&amp;"], &refs, &o), 4.464285714285714);
    }

    #[test]
    fn zh_quirk_ranges() {
        // U+2014 (em dash) lies in the widened range, so it is split like a Chinese character.
        assert!(is_chinese_char('\u{2014}'));
        assert!(!is_chinese_char('\u{2000}'));
        assert!(is_chinese_char('中'));
    }

    #[test]
    fn bleu_basics() {
        let o = BleuOptions::default();
        let s = corpus_bleu(&["the cat sat on the mat"], &[vec!["the cat sat on the mat"]], &o);
        assert!((s.score - 100.0).abs() < 1e-9);
        let s = corpus_bleu(&["completely different"], &[vec!["the cat sat on the mat"]], &o);
        assert_eq!(s.score, 0.0);
    }
}
