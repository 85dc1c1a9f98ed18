//! ⑦ The regression gate: a candidate run against a baseline, item by item (matched by model,
//! task and doc hash), with a significance test per metric.
//!
//! Binary metrics get an exact McNemar test on the discordant items; per-sample continuous scores
//! and corpus metrics a paired randomization test (each item's two scores swapped or not: exact
//! over every assignment for a few items, seeded Monte Carlo beyond), with a seeded paired
//! bootstrap interval of the drop. The randomization test, not the bootstrap, gives the p-value:
//! a percentile bootstrap calls one item that got worse "significant" (every resample of one
//! negative difference is negative), while swapping gives that item p = 1. p-values are adjusted
//! over all the gate's comparisons (Holm, unless turned off), since a gate of many metrics fails
//! when any one does. A comparison fails only when the drop exceeds its tolerance *and* is
//! significant at alpha. An item the baseline scored and the candidate did not (a task dropped
//! from the suite, an item that errored) fails its comparisons too: a gate must not pass by
//! comparing less.

use crate::store::Sample;
use std::collections::BTreeMap;

/// One model × task × metric comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub model: String,
    pub task: String,
    pub metric: String,
    /// Items scored by both runs.
    pub n: usize,
    pub baseline: f64,
    pub candidate: f64,
    /// How much worse the candidate is (positive = worse), in the metric's units.
    pub drop: f64,
    /// Paired bootstrap 95% interval of the drop (seeded; NaN where it cannot be computed).
    pub drop_ci: [f64; 2],
    pub tolerance: f64,
    pub test: &'static str,
    /// The test's two-sided p-value for this comparison alone.
    pub p_value: f64,
    /// `p_value` adjusted over all the gate's comparisons (Holm), or the same with no correction;
    /// what `regression` is decided on.
    pub p_adjusted: f64,
    pub regression: bool,
    /// Items the baseline scored on this metric that the candidate did not score (errored or
    /// left out); any fails the comparison. With `n` = 0, candidate, drop and p are NaN.
    pub missing_items: usize,
    /// Items right in the baseline and wrong in the candidate (binary metrics).
    pub flipped: Vec<String>,
    /// What the figures alone do not say: a metric that overflowed and was compared on its log,
    /// or too few items for any drop to be significant.
    pub note: Option<String>,
    /// Whether the candidate is worse (positive drop; for a metric whose values overflowed, the
    /// sign of the drop in its finite form, such as log perplexity); kept for the adjustment.
    #[serde(skip)]
    worse: bool,
}

impl Comparison {
    /// Whether this comparison fails the gate.
    pub fn failed(&self) -> bool {
        self.regression || self.missing_items > 0
    }
}

/// How p-values are adjusted over the gate's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Holm's step-down: the chance that any comparison fails on noise stays at most alpha.
    Holm,
    /// Each comparison at alpha on its own.
    None,
}

/// Metrics where lower is better.
pub fn lower_is_better(metric: &str) -> bool {
    metric.ends_with("perplexity") || metric == "bits-per-byte" || metric.ends_with(":parse-failure-rate")
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Σ_{i ≤ k} C(n, i) / 2^n: terms from i = k down, each from the next by i / (n − i + 1), in
    // logs to stay finite for large n (linear in k).
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let mut ln_term: f64 = (1..=k).map(|j| ((n - k + j) as f64 / j as f64).ln()).sum::<f64>();
    let mut tail = 0.0;
    for i in (0..=k).rev() {
        tail += (ln_term - ln_half_n).exp();
        if i > 0 {
            ln_term += (i as f64 / (n - i + 1) as f64).ln();
        }
    }
    (2.0 * tail).min(1.0)
}

/// Items up to which the randomization test enumerates every assignment (2^n of them).
const EXACT_ITEMS: usize = 12;
/// Random assignments of the Monte Carlo randomization test beyond [`EXACT_ITEMS`]: p ≥ 1/2000.
const ROUNDS: usize = 1999;
/// At most this many for a p near that floor, where an adjustment over many comparisons needs a
/// smaller one (see [`compare`]).
const MAX_ROUNDS: usize = 199_999;
/// Resamples of the bootstrap interval of the drop.
const BOOTSTRAP: usize = 1000;

/// Two-sided paired randomization test that `stat` does not depend on which run is which:
/// `stat(swap)` is the statistic with item i's two sides exchanged where `swap[i]`. The p-value is
/// the share of assignments whose |stat| reaches the observed one (a NaN counts as reaching it):
/// over all 2^n assignments for n ≤ [`EXACT_ITEMS`], else over `rounds` seeded random ones and
/// the observed one.
fn paired_randomization(n: usize, stat: &dyn Fn(&[bool]) -> f64, seed: u64, rounds: usize) -> f64 {
    let mut swap = vec![false; n];
    let observed = stat(&swap).abs();
    // equal up to rounding: a sum in another order may miss the observed value by an ulp
    let reaches = |t: f64| t.is_nan() || t.abs() >= observed * (1.0 - 1e-9);
    if n <= EXACT_ITEMS {
        let total = 1usize << n;
        let hits = (0..total)
            .filter(|mask| {
                swap.iter_mut().enumerate().for_each(|(i, s)| *s = mask >> i & 1 == 1);
                reaches(stat(&swap))
            })
            .count();
        return hits as f64 / total as f64;
    }
    let mut rng = crate::stats::SplitMix64::new(seed);
    let mut hits = 1; // the observed assignment
    for _ in 0..rounds {
        swap.iter_mut().for_each(|s| *s = rng.next_u64() >> 63 == 1);
        hits += usize::from(reaches(stat(&swap)));
    }
    hits as f64 / (rounds + 1) as f64
}

/// Paired bootstrap 95% percentile interval of `drop(resample)` (seeded; NaN resamples left out,
/// NaN where fewer than half remain).
fn bootstrap_interval(n: usize, drop: &dyn Fn(&[usize]) -> f64, seed: u64) -> [f64; 2] {
    let mut rng = crate::stats::SplitMix64::new(seed ^ 0xb007);
    let mut idx = vec![0usize; n];
    let mut ds: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.below(n));
            drop(&idx)
        })
        .filter(|d| !d.is_nan())
        .collect();
    if n == 0 || ds.len() < BOOTSTRAP / 2 {
        return [f64::NAN; 2];
    }
    ds.sort_by(f64::total_cmp);
    [crate::stats::percentile(&ds, 0.025), crate::stats::percentile(&ds, 0.975)]
}

/// A p-value to read: 4 decimals, or two significant digits in scientific notation below 0.0001
/// (where 4 decimals would print a misleading 0.0000); `—` where there is none.
pub fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "—".into()
    } else if p == 0.0 || p >= 1e-4 {
        format!("{p:.4}")
    } else {
        format!("{p:.1e}")
    }
}

/// A difference with its sign, 4 decimals; one that rounds to zero reads `+0.0000`, not `-0.0000`.
pub fn signed(v: f64) -> String {
    let s = format!("{v:+.4}");
    if s == "-0.0000" { "+0.0000".into() } else { s }
}

/// One item scored by both runs: (item id, baseline stats, candidate stats).
type Paired = (String, Vec<f64>, Vec<f64>);

/// (model, task, metric)
type Key = (String, String, String);

/// The baseline's scored items' stats for a key, and the items both runs scored.
type Group = (Vec<Vec<f64>>, Vec<Paired>);

/// Compares `candidate` with `baseline`. `tolerances` maps metric names to allowed drops. Items are
/// matched by model, task and doc hash (the k-th of several identical documents with the k-th).
/// Errors name an item whose statistics do not fit its metric (a corrupted store).
///
/// A Monte Carlo p cannot go below 1/(rounds + 1), and Holm multiplies the smallest p by the
/// number of comparisons m: with a fixed 1999 rounds a gate of 100 comparisons could never fail
/// a randomization test, however large the drop. So a p near that floor is computed again with
/// enough rounds for p · m to reach alpha / 10 (at most [`MAX_ROUNDS`]).
pub fn compare(baseline: &[Sample], candidate: &[Sample], tolerances: &BTreeMap<String, f64>, alpha: f64, correction: Correction, seed: u64) -> Result<Vec<Comparison>, String> {
    let groups = pair_up(baseline, candidate)?;
    let mut out: Vec<Comparison> = groups
        .iter()
        .map(|((model, task, metric), (scored, pairs))| {
            let mut c = test(metric, scored, pairs, seed, ROUNDS);
            c.model = model.clone();
            c.task = task.clone();
            c.metric = metric.clone();
            c.tolerance = tolerances.get(metric).copied().unwrap_or(0.0);
            c.missing_items = scored.len() - pairs.len();
            c
        })
        .collect();
    let m = out.iter().filter(|c| !c.p_value.is_nan()).count();
    let needed = ((10.0 * m as f64 / alpha).ceil() as usize).min(MAX_ROUNDS);
    if correction == Correction::Holm && needed > ROUNDS {
        for (c, (_, (scored, pairs))) in out.iter_mut().zip(&groups) {
            let near_floor = c.p_value <= 20.0 / (ROUNDS + 1) as f64;
            if c.n > EXACT_ITEMS && c.test.starts_with("paired randomization") && near_floor {
                c.p_value = test(&c.metric, scored, pairs, seed, needed).p_value;
            }
        }
    }
    let raw: Vec<f64> = out.iter().map(|c| c.p_value).collect();
    let adjusted = if correction == Correction::Holm { holm(&raw) } else { raw };
    for (c, p) in out.iter_mut().zip(adjusted) {
        c.p_adjusted = p;
        let beyond = if c.drop.is_nan() { c.worse } else { c.drop > c.tolerance };
        c.regression = c.n > 0 && beyond && c.worse && c.p_adjusted < alpha;
        // the smallest p over 2^n assignments is 2 / 2^n
        let floor = 2.0 / (1u64 << c.n.min(62)) as f64;
        if c.test.starts_with("paired randomization") && c.worse && floor >= alpha {
            let more = format!("with {} items the smallest p this test can give is {floor:.4}, so no drop can be significant at alpha {alpha}", c.n);
            c.note = Some(c.note.take().map_or(more.clone(), |n| format!("{n}; {more}")));
        }
    }
    Ok(out)
}

/// Each model × task × metric the baseline scored: the baseline's stats rows, and the items both
/// runs scored; an error where a row's length does not fit its metric.
fn pair_up(baseline: &[Sample], candidate: &[Sample]) -> Result<Vec<(Key, Group)>, String> {
    // (model, task, doc hash, occurrence) of each sample, in the store's order
    let keyed = |samples: &[Sample]| -> Vec<((String, String, String, usize), usize)> {
        let mut seen: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
        let mut sorted: Vec<usize> = (0..samples.len()).collect();
        sorted.sort_by_key(|&i| (&samples[i].model, &samples[i].task, samples[i].item));
        sorted
            .into_iter()
            .map(|i| {
                let s = &samples[i];
                let k = seen.entry((&s.model, &s.task, &s.doc_hash)).or_default();
                *k += 1;
                ((s.model.clone(), s.task.clone(), s.doc_hash.clone(), *k), i)
            })
            .collect()
    };
    let stats = |s: &Sample, metric: &str| s.stats.get(metric).and_then(|v| serde_json::from_value::<Vec<f64>>(v.clone()).ok()).filter(|v| !v.is_empty());
    let cand: BTreeMap<_, usize> = keyed(candidate).into_iter().filter(|(_, i)| candidate[*i].error.is_none()).collect();
    // (model, task, metric) → the baseline's scored items' stats, and the pairs
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for (key, i) in keyed(baseline) {
        let b = &baseline[i];
        if b.error.is_some() {
            continue;
        }
        let c = cand.get(&key).map(|&j| &candidate[j]);
        for metric in b.stats.keys() {
            let Some(bs) = stats(b, metric) else { continue };
            let g = groups.entry((b.model.clone(), b.task.clone(), metric.clone())).or_default();
            if let Some((c, cs)) = c.and_then(|c| Some((c, stats(c, metric)?))) {
                g.1.push((c.item_id.clone(), bs.clone(), cs));
            }
            g.0.push(bs);
        }
    }
    // every row of a metric has as many statistics as the first (a corpus aggregate indexes them)
    for ((model, task, metric), (scored, pairs)) in &groups {
        let want = scored[0].len();
        let odd = pairs.iter().flat_map(|(id, b, c)| [(id, b, "baseline"), (id, c, "candidate")]).find(|(_, v, _)| v.len() != want);
        if let Some((id, v, side)) = odd {
            return Err(format!("{model} / {task} / {metric}: item {id} has {} statistics in the {side} run where the baseline's items have {want}; the store is damaged or was written by another version of llmeval", v.len()));
        }
        if let Some(v) = scored.iter().find(|v| v.len() != want) {
            return Err(format!("{model} / {task} / {metric}: the baseline has items with {want} and with {} statistics; the store is damaged or was written by another version of llmeval", v.len()));
        }
    }
    Ok(groups.into_iter().collect())
}

/// Holm's step-down adjustment of `ps` (NaNs stay NaN and do not count): the i-th smallest of the
/// m p-values times m − i (from 0), then the running maximum, at most 1.
pub fn holm(ps: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..ps.len()).filter(|&i| !ps[i].is_nan()).collect();
    order.sort_by(|&a, &b| ps[a].total_cmp(&ps[b]));
    let m = order.len();
    let mut out = vec![f64::NAN; ps.len()];
    let mut running = 0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max((ps[i] * (m - rank) as f64).min(1.0));
        out[i] = running;
    }
    out
}

/// The comparison of one model × task × metric over `pairs` (`scored`: the baseline's items),
/// without its names, tolerance and adjustment.
fn test(metric: &str, scored: &[Vec<f64>], pairs: &[Paired], seed: u64, rounds: usize) -> Comparison {
    let n = pairs.len();
    let m = crate::metric::by_name(metric);
    let sign = if lower_is_better(metric) { -1.0 } else { 1.0 };
    let blank = Comparison {
        model: String::new(),
        task: String::new(),
        metric: String::new(),
        n,
        baseline: f64::NAN,
        candidate: f64::NAN,
        drop: f64::NAN,
        drop_ci: [f64::NAN; 2],
        tolerance: 0.0,
        test: "",
        p_value: f64::NAN,
        p_adjusted: f64::NAN,
        regression: false,
        missing_items: 0,
        flipped: vec![],
        note: None,
        worse: false,
    };
    let corpus = m.as_ref().filter(|m| m.is_corpus());
    // the metric over rows, and a strictly increasing form of it that stays finite
    let value = |rows: &[&[f64]]| corpus.map_or_else(|| rows.iter().map(|r| r[0]).sum::<f64>() / rows.len() as f64, |m| m.aggregate(rows));
    let statistic = |rows: &[&[f64]]| corpus.map_or_else(|| value(rows), |m| m.test_statistic(rows));
    let all_scored: Vec<&[f64]> = scored.iter().map(|v| v.as_slice()).collect();
    if n == 0 {
        return Comparison { baseline: value(&all_scored), test: "missing in candidate", ..blank };
    }
    let side = |swap: &[bool], second: bool| -> Vec<&[f64]> { pairs.iter().zip(swap).map(|((_, b, c), &s)| if s != second { c.as_slice() } else { b.as_slice() }).collect() };
    let unswapped = vec![false; n];
    let (base_rows, cand_rows) = (side(&unswapped, false), side(&unswapped, true));
    let (baseline, candidate) = (value(&base_rows), value(&cand_rows));
    let drop = sign * (baseline - candidate);
    let (base_stat, cand_stat) = (statistic(&base_rows), statistic(&cand_rows));
    let worse = sign * (base_stat - cand_stat) > 0.0;
    let note = (!baseline.is_finite() || !candidate.is_finite()).then(|| {
        format!("{metric} overflowed ({baseline} → {candidate}); the test and the verdict use its log: {base_stat:.4} → {cand_stat:.4}")
    });
    let resampled = |idx: &[usize], second: bool| -> Vec<&[f64]> { idx.iter().map(|&i| if second { pairs[i].2.as_slice() } else { pairs[i].1.as_slice() }).collect() };
    let drop_ci = bootstrap_interval(n, &|idx| sign * (value(&resampled(idx, false)) - value(&resampled(idx, true))), seed);
    let binary = corpus.is_none() && pairs.iter().all(|(_, b, c)| (b[0] == 0.0 || b[0] == 1.0) && (c[0] == 0.0 || c[0] == 1.0));
    if binary {
        let went = |from: f64| pairs.iter().filter(move |(_, x, y)| x[0] == from && y[0] == 1.0 - from);
        let flipped = went(1.0).map(|p| p.0.clone()).collect::<Vec<_>>();
        let p_value = mcnemar_exact(flipped.len(), went(0.0).count());
        return Comparison { baseline, candidate, drop, drop_ci, test: "exact McNemar", p_value, flipped, note, worse, ..blank };
    }
    let p_value = match corpus {
        Some(_) => paired_randomization(n, &|swap| statistic(&side(swap, false)) - statistic(&side(swap, true)), seed, rounds),
        // the mean difference with each item's sign flipped where swapped
        None => {
            let d: Vec<f64> = pairs.iter().map(|(_, b, c)| b[0] - c[0]).collect();
            paired_randomization(n, &|swap| d.iter().zip(swap).map(|(d, &s)| if s { -d } else { *d }).sum::<f64>(), seed, rounds)
        }
    };
    let test = if corpus.is_some() { "paired randomization (corpus)" } else { "paired randomization" };
    Comparison { baseline, candidate, drop, drop_ci, test, p_value, note, worse, ..blank }
}

/// The drop for a message: the number, or where the metric overflowed, its log's.
fn drop_text(c: &Comparison) -> String {
    if c.drop.is_nan() {
        "an amount that overflowed (see the note)".into()
    } else {
        format!("{:.4}", c.drop)
    }
}

/// What a comparison with missing items lacks, in a sentence.
pub fn missing_line(c: &Comparison) -> String {
    let scored = c.n + c.missing_items;
    if c.n == 0 {
        format!("{} / {} / {}: scored in the baseline ({:.4} over {scored} items), missing from the candidate", c.model, c.task, c.metric, c.baseline)
    } else {
        format!("{} / {} / {}: {} of the {scored} items the baseline scored have no score in the candidate (errored or left out)", c.model, c.task, c.metric, c.missing_items)
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// JUnit XML (`tests/goldens/junit.xsd`): one test case per model × task × metric; a regression
/// or a missing comparison is a failure.
pub fn junit(cs: &[Comparison]) -> String {
    let failures = cs.iter().filter(|c| c.failed()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"llmeval gate\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\">\n  <testsuite name=\"llmeval gate\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n",
        n = cs.len()
    );
    for c in cs {
        out.push_str(&format!("    <testcase classname=\"{}\" name=\"{} {}\">", xml(&c.model), xml(&c.task), xml(&c.metric)));
        if c.regression {
            let detail = if c.flipped.is_empty() {
                format!("baseline {:.4}, candidate {:.4} over {} items{}", c.baseline, c.candidate, c.n, c.note.as_ref().map_or(String::new(), |n| format!(" ({n})")))
            } else {
                format!("items right in the baseline and wrong now: {}", c.flipped.join(", "))
            };
            out.push_str(&format!(
                "\n      <failure type=\"regression\" message=\"{} dropped by {} (tolerance {}), p = {} adjusted ({} alone, {})\">{}</failure>\n    ",
                xml(&c.metric),
                drop_text(c),
                c.tolerance,
                fmt_p(c.p_adjusted),
                fmt_p(c.p_value),
                c.test,
                xml(&detail)
            ));
        } else if c.missing_items > 0 {
            out.push_str(&format!("\n      <failure type=\"missing\" message=\"{}\">the gate does not pass by comparing less</failure>\n    ", xml(&missing_line(c))));
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// A GitHub-flavoured markdown summary.
pub fn markdown(cs: &[Comparison], baseline: &str, candidate: &str) -> String {
    let failed = cs.iter().any(|c| c.failed());
    let mut out = format!(
        "### llmeval gate: {}\n\nBaseline `{baseline}` → candidate `{candidate}`\n\n| model | task | metric | n | baseline | candidate | drop (95% CI) | test | p | p adjusted | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        if failed { "❌ regression" } else { "✅ pass" }
    );
    for c in cs {
        let verdict = match (c.regression, c.missing_items > 0) {
            (true, true) => "regression, missing items",
            (true, false) => "regression",
            (false, true) => "missing items",
            (false, false) => "ok",
        };
        let ci = if c.drop_ci.iter().any(|v| v.is_nan()) { String::new() } else { format!(" [{}, {}]", signed(c.drop_ci[0]), signed(c.drop_ci[1])) };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {}{ci} | {} | {} | {} | {verdict} |\n",
            md_escape(&c.model),
            md_escape(&c.task),
            md_escape(&c.metric),
            c.n,
            c.baseline,
            c.candidate,
            signed(c.drop),
            c.test,
            fmt_p(c.p_value),
            fmt_p(c.p_adjusted)
        ));
    }
    for c in cs.iter().filter(|c| c.regression && !c.flipped.is_empty()) {
        out.push_str(&format!("\n{} / {} / {}: right before, wrong now: {}\n", md_escape(&c.model), md_escape(&c.task), c.metric, c.flipped.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")));
    }
    for c in cs.iter().filter(|c| c.missing_items > 0) {
        out.push_str(&format!("\n{}\n", md_escape(&missing_line(c))));
    }
    for c in cs {
        if let Some(n) = &c.note {
            out.push_str(&format!("\n{} / {} / {}: {}\n", md_escape(&c.model), md_escape(&c.task), c.metric, md_escape(n)));
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_that_rounds_to_zero_has_no_minus_sign() {
        assert_eq!((signed(-1e-17), signed(-0.0), signed(0.25), signed(-0.25)), ("+0.0000".into(), "+0.0000".into(), "+0.2500".into(), "-0.2500".into()));
    }

    /// A sample of task `t`, item `item` (document `doc`), with per-metric stats; errored if
    /// `stats` is empty.
    fn sample(t: &str, item: i64, doc: &str, stats: &[(&str, Vec<f64>)]) -> Sample {
        Sample {
            run_id: String::new(),
            model: "m".into(),
            task: t.into(),
            item,
            item_id: format!("q{item}"),
            doc_hash: doc.into(),
            category: None,
            prompt: String::new(),
            response: None,
            answer: None,
            target: None,
            evidence: None,
            scores: Default::default(),
            stats: stats.iter().map(|(m, v)| (m.to_string(), serde_json::json!(v))).collect(),
            latency_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            attempts: 1,
            error: stats.is_empty().then(|| "boom".to_string()),
            cached: false,
            finished_at: 0.0,
        }
    }

    /// One task `t` of one metric, a sample an item (`None`: errored).
    fn run(t: &str, metric: &str, values: &[Option<Vec<f64>>]) -> Vec<Sample> {
        values.iter().enumerate().map(|(i, v)| sample(t, i as i64, &format!("d{i}"), &v.iter().map(|v| (metric, v.clone())).collect::<Vec<_>>())).collect()
    }

    fn gate(base: &[Sample], cand: &[Sample], correction: Correction) -> Vec<Comparison> {
        compare(base, cand, &BTreeMap::new(), 0.05, correction, 1234).expect("comparable")
    }

    #[test]
    fn one_or_two_items_that_got_worse_are_not_significant() {
        // a percentile bootstrap gives p = 2/1001 for any number of items all worse
        for (n, p) in [(1, 1.0), (2, 0.5), (3, 0.25)] {
            let base = run("t", "rouge1", &vec![Some(vec![0.9]); n]);
            let cand = run("t", "rouge1", &vec![Some(vec![0.8]); n]);
            let c = &gate(&base, &cand, Correction::None)[0];
            assert_eq!((c.test, c.n, c.p_value, c.regression), ("paired randomization", n, p, false), "{c:?}");
            assert!((c.drop - 0.1).abs() < 1e-12 && (c.drop_ci[0] - 0.1).abs() < 1e-12, "{c:?}");
        }
    }

    #[test]
    fn randomization_counts_every_assignment_for_few_items_and_samples_beyond() {
        // differences 1, -2, 3, 4 (sum 6): |±1 ±2 ±3 ±4| ≥ 6 for 1+2+3+4, -1+2+3+4, 1-2+3+4 and
        // their negations: 6 of 16
        let base = run("t", "rouge1", &[1.0, -2.0, 3.0, 4.0].map(|d| Some(vec![d])));
        let cand = run("t", "rouge1", &[Some(vec![0.0]), Some(vec![0.0]), Some(vec![0.0]), Some(vec![0.0])]);
        assert_eq!(gate(&base, &cand, Correction::None)[0].p_value, 0.375);
        // 30 items all worse by the same: only the observed assignment and its negation reach it
        // (2 in 2^30), so the Monte Carlo p is its floor, 1/2000, and the drop a regression
        let base = run("t", "rouge1", &vec![Some(vec![0.9]); 30]);
        let cand = run("t", "rouge1", &vec![Some(vec![0.8]); 30]);
        let c = &gate(&base, &cand, Correction::None)[0];
        assert_eq!((c.p_value, c.regression), (1.0 / 2000.0, true), "{c:?}");
        // no difference: p = 1
        let c = &gate(&base, &base, Correction::None)[0];
        assert_eq!((c.p_value, c.drop, c.regression), (1.0, 0.0, false));
    }

    #[test]
    fn items_the_candidate_did_not_score_fail_their_comparison() {
        let base = run("t", "exact-match", &vec![Some(vec![1.0]); 10]);
        let mut values = vec![None; 6];
        values.extend(vec![Some(vec![1.0]); 4]);
        let cand = run("t", "exact-match", &values);
        let c = &gate(&base, &cand, Correction::Holm)[0];
        assert_eq!((c.n, c.missing_items, c.drop, c.regression), (4, 6, 0.0, false));
        assert!(c.failed());
        assert_eq!(missing_line(c), "m / t / exact-match: 6 of the 10 items the baseline scored have no score in the candidate (errored or left out)");
        // every item missing: the baseline's value over its items, in the metric's own terms
        let base = run("t", "perplexity", &[-2.0, -3.0, -4.0].map(|ll| Some(vec![ll])));
        let cand = run("t", "perplexity", &[None, None, None]);
        let c = &gate(&base, &cand, Correction::Holm)[0];
        assert_eq!((c.n, c.missing_items, c.test), (0, 3, "missing in candidate"));
        assert!((c.baseline - 3f64.exp()).abs() < 1e-12, "{c:?}");
        assert!(c.failed() && c.p_adjusted.is_nan());
    }

    #[test]
    fn holm_by_hand() {
        // as statsmodels' multipletests(method="holm")
        let got = holm(&[0.01, 0.04, f64::NAN, 0.03]);
        assert_eq!(got[..2], [0.03, 0.06]);
        assert!(got[2].is_nan());
        assert_eq!(got[3], 0.06);
        assert_eq!(holm(&[0.5, 0.9]), [1.0, 1.0]);
    }

    #[test]
    fn the_adjustment_spans_the_gates_comparisons() {
        // a drop of 7 flips in 7 (p = 2/128 alone) on each of three tasks
        let values = |right: usize| (0..20).map(|i| Some(vec![f64::from(u8::from(i < right))])).collect::<Vec<_>>();
        let base: Vec<Sample> = ["a", "b", "c"].iter().flat_map(|t| run(t, "exact-match", &values(20))).collect();
        let cand: Vec<Sample> = ["a", "b", "c"].iter().flat_map(|t| run(t, "exact-match", &values(13))).collect();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let alone = gate(&base, &cand, Correction::None);
        assert!(alone.iter().all(|c| near(c.p_value, 2.0 / 128.0) && c.p_adjusted == c.p_value && c.regression), "{alone:?}");
        let holm = gate(&base, &cand, Correction::Holm);
        assert!(holm.iter().all(|c| near(c.p_adjusted, 6.0 / 128.0) && c.regression), "{holm:?}");
        let four: Vec<Sample> = base.iter().cloned().chain(run("d", "exact-match", &values(20))).collect();
        let cand4: Vec<Sample> = cand.iter().cloned().chain(run("d", "exact-match", &values(20))).collect();
        let holm = gate(&four, &cand4, Correction::Holm);
        // a fourth comparison (unchanged, p = 1) makes the factor 4: 8/128 > 0.05
        assert!(holm.iter().filter(|c| c.task != "d").all(|c| near(c.p_adjusted, 8.0 / 128.0) && !c.regression), "{holm:?}");
    }

    #[test]
    fn a_perplexity_that_overflows_is_compared_in_logs() {
        let base = run("t", "perplexity", &vec![Some(vec![-800.0]); 20]);
        let cand = run("t", "perplexity", &vec![Some(vec![-900.0]); 20]);
        let c = &gate(&base, &cand, Correction::None)[0];
        assert!(c.baseline.is_infinite() && c.drop.is_nan(), "{c:?}");
        assert_eq!((c.test, c.p_value, c.regression), ("paired randomization (corpus)", 1.0 / 2000.0, true), "{c:?}");
        // the better candidate passes
        let c = &gate(&cand, &base, Correction::None)[0];
        assert!(!c.regression, "{c:?}");
    }

    #[test]
    fn a_large_drop_stays_significant_among_many_comparisons() {
        // 30 items 0.9 → 0.1 next to 99 unchanged tasks: Holm multiplies the smallest p by 100,
        // so the Monte Carlo p must go below its 1999-round floor of 1/2000
        let mut base = run("big", "rouge1", &vec![Some(vec![0.9]); 30]);
        let mut cand = run("big", "rouge1", &vec![Some(vec![0.1]); 30]);
        for t in 0..99 {
            base.extend(run(&format!("t{t}"), "exact-match", &vec![Some(vec![1.0]); 3]));
            cand.extend(run(&format!("t{t}"), "exact-match", &vec![Some(vec![1.0]); 3]));
        }
        let cs = gate(&base, &cand, Correction::Holm);
        let big = cs.iter().find(|c| c.task == "big").unwrap();
        assert!(big.p_value < 1.0 / 2000.0 && big.p_adjusted < 0.05 && big.regression, "{big:?}");
        assert!(cs.iter().filter(|c| c.task != "big").all(|c| !c.regression));
    }

    #[test]
    fn notes_say_what_the_figures_do_not() {
        // four items cannot reach p < 0.05 (2/16 at best)
        let c = &gate(&run("t", "rouge1", &vec![Some(vec![0.9]); 4]), &run("t", "rouge1", &vec![Some(vec![0.1]); 4]), Correction::None)[0];
        assert_eq!(c.note.as_deref(), Some("with 4 items the smallest p this test can give is 0.1250, so no drop can be significant at alpha 0.05"));
        // an overflowed perplexity names its log's values
        let c = &gate(&run("t", "perplexity", &vec![Some(vec![-800.0]); 20]), &run("t", "perplexity", &vec![Some(vec![-900.0]); 20]), Correction::None)[0];
        assert_eq!(c.note.as_deref(), Some("perplexity overflowed (inf → inf); the test and the verdict use its log: 800.0000 → 900.0000"));
        assert!(junit(std::slice::from_ref(c)).contains("perplexity dropped by an amount that overflowed (see the note)"));
    }

    #[test]
    fn statistics_that_do_not_fit_their_metric_are_an_error() {
        let base = run("t", "bleu", &vec![Some(vec![5.0, 5.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0, 6.0, 6.0]); 3]);
        let mut cand = base.clone();
        cand[1].stats.insert("bleu".into(), serde_json::json!([5.0, 6.0, 3.0]));
        let e = compare(&base, &cand, &BTreeMap::new(), 0.05, Correction::Holm, 1).unwrap_err();
        assert_eq!(e, "m / t / bleu: item q1 has 3 statistics in the candidate run where the baseline's items have 10; the store is damaged or was written by another version of llmeval");
    }

    #[test]
    fn identical_documents_pair_in_order() {
        // two items of one document, right then wrong in both runs: nothing changed
        let mk = || vec![sample("t", 0, "same", &[("exact-match", vec![1.0])]), sample("t", 1, "same", &[("exact-match", vec![0.0])])];
        let c = &gate(&mk(), &mk(), Correction::None)[0];
        assert_eq!((c.n, c.drop, c.flipped.len(), c.p_value), (2, 0.0, 0, 1.0), "{c:?}");
    }

    #[test]
    fn p_values_read_below_four_decimals() {
        assert_eq!(fmt_p(0.04321), "0.0432");
        assert_eq!(fmt_p(1.0), "1.0000");
        assert_eq!(fmt_p(1e-4), "0.0001");
        assert_eq!(fmt_p(5.72e-6), "5.7e-6");
        assert_eq!(fmt_p(0.0), "0.0000");
        assert_eq!(fmt_p(f64::NAN), "—");
    }

    #[test]
    fn mcnemar_by_hand() {
        // b = 0, c = 5: p = 2 · (1/32) = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b = 1, c = 9: p = 2 · (1 + 10)/1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!(mcnemar_exact(0, 2000) < 1e-300 || mcnemar_exact(0, 2000) == 0.0);
        // scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue, up to large tables (linear time)
        for (b, c, p) in [(3, 17, 0.0025768280029296875), (100, 140, 0.01166409231767769), (1000, 1100, 0.03072070786424249), (59_000, 61_000, 7.892164410183027e-09)] {
            assert!((mcnemar_exact(b, c) / p - 1.0).abs() < 1e-9, "{b} {c}: {} vs {p}", mcnemar_exact(b, c));
        }
        assert_eq!(mcnemar_exact(60_000, 60_000), 1.0);
    }
}
