//! ⑦ The regression gate: a candidate run against a baseline, item by item (matched by model,
//! task and doc hash), with a significance test per metric.
//!
//! Binary metrics get an exact McNemar test on the discordant items; per-sample continuous scores
//! get a seeded paired bootstrap of the mean difference; corpus metrics a paired bootstrap of the
//! corpus difference. A comparison fails only when the drop exceeds its tolerance *and* is
//! significant at alpha. A model × task × metric that the baseline scored and the candidate did
//! not (a task dropped from the suite, every item errored) fails too: a gate must not pass by
//! comparing less.

use crate::store::Sample;
use std::collections::BTreeMap;

/// One model × task × metric comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub model: String,
    pub task: String,
    pub metric: String,
    pub n: usize,
    pub baseline: f64,
    pub candidate: f64,
    /// How much worse the candidate is (positive = worse), in the metric's units.
    pub drop: f64,
    pub tolerance: f64,
    pub test: &'static str,
    pub p_value: f64,
    pub regression: bool,
    /// The baseline scored this and the candidate has no scored item for it (`n` = 0; candidate,
    /// drop and p are NaN). Counts as a failure.
    pub missing: bool,
    /// Items right in the baseline and wrong in the candidate (binary metrics).
    pub flipped: Vec<String>,
}

impl Comparison {
    /// Whether this comparison fails the gate.
    pub fn failed(&self) -> bool {
        self.regression || self.missing
    }
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
    // Σ_{i ≤ k} C(n, i) / 2^n, in logs to stay finite for large n.
    let ln_c = |i: usize| -> f64 { (1..=i).map(|j| ((n - i + j) as f64 / j as f64).ln()).sum() };
    let tail: f64 = (0..=k).map(|i| (ln_c(i) - n as f64 * std::f64::consts::LN_2).exp()).sum();
    (2.0 * tail).min(1.0)
}

/// Two-sided paired-bootstrap p-value that `diff(resample)` is 0, and the observed difference.
fn paired_bootstrap(n: usize, diff: &dyn Fn(&[usize]) -> f64, iterations: usize, seed: u64) -> (f64, f64) {
    let all: Vec<usize> = (0..n).collect();
    let observed = diff(&all);
    let mut rng = crate::stats::SplitMix64::new(seed);
    let (mut le, mut ge) = (0usize, 0usize);
    let mut idx = vec![0usize; n];
    for _ in 0..iterations {
        idx.iter_mut().for_each(|i| *i = rng.below(n));
        let d = diff(&idx);
        le += usize::from(d <= 0.0);
        ge += usize::from(d >= 0.0);
    }
    let p = (2.0 * (le.min(ge) as f64 + 1.0) / (iterations as f64 + 1.0)).min(1.0);
    (observed, p)
}

/// One item scored by both runs: (item id, baseline stats, candidate stats).
type Paired = (String, Vec<f64>, Vec<f64>);

/// Compares `candidate` with `baseline`. `tolerances` maps metric names to allowed drops.
pub fn compare(baseline: &[Sample], candidate: &[Sample], tolerances: &BTreeMap<String, f64>, alpha: f64, seed: u64) -> Vec<Comparison> {
    let key = |s: &Sample| (s.model.clone(), s.task.clone(), s.doc_hash.clone());
    let base: BTreeMap<_, &Sample> = baseline.iter().filter(|s| s.error.is_none()).map(|s| (key(s), s)).collect();
    // (model, task, metric) → paired (item id, baseline stats, candidate stats).
    let mut groups: BTreeMap<(String, String, String), Vec<Paired>> = BTreeMap::new();
    for c in candidate.iter().filter(|s| s.error.is_none()) {
        let Some(b) = base.get(&key(c)) else { continue };
        for (metric, cs) in &c.stats {
            let (Some(bs), Ok(cs)) = (b.stats.get(metric), serde_json::from_value::<Vec<f64>>(cs.clone())) else { continue };
            let Ok(bs) = serde_json::from_value::<Vec<f64>>(bs.clone()) else { continue };
            groups.entry((c.model.clone(), c.task.clone(), metric.clone())).or_default().push((c.item_id.clone(), bs, cs));
        }
    }
    let mut out = Vec::new();
    // What the baseline scored and the candidate did not.
    let mut scored: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for b in base.values() {
        for (metric, bs) in &b.stats {
            if let Ok(v) = serde_json::from_value::<Vec<f64>>(bs.clone()) {
                scored.entry((b.model.clone(), b.task.clone(), metric.clone())).or_default().push(v.first().copied().unwrap_or(f64::NAN));
            }
        }
    }
    for ((model, task, metric), vals) in scored {
        if !groups.contains_key(&(model.clone(), task.clone(), metric.clone())) {
            let baseline = vals.iter().sum::<f64>() / vals.len() as f64;
            let tolerance = tolerances.get(&metric).copied().unwrap_or(0.0);
            out.push(Comparison { model, task, metric, n: 0, baseline, candidate: f64::NAN, drop: f64::NAN, tolerance, test: "missing in candidate", p_value: f64::NAN, regression: false, missing: true, flipped: vec![] });
        }
    }
    for ((model, task, metric), pairs) in groups {
        let Some(m) = crate::metric::by_name(&metric) else {
            // Judge metrics: per-sample means.
            out.push(continuous(&model, &task, &metric, &pairs, tolerances, alpha, seed));
            continue;
        };
        if m.is_corpus() {
            let n = pairs.len();
            let agg = |side: usize, idx: &[usize]| -> f64 {
                let rows: Vec<&[f64]> = idx.iter().map(|&i| if side == 0 { pairs[i].1.as_slice() } else { pairs[i].2.as_slice() }).collect();
                m.aggregate(&rows)
            };
            let sign = if lower_is_better(&metric) { -1.0 } else { 1.0 };
            let (drop, p) = paired_bootstrap(n, &|idx| sign * (agg(0, idx) - agg(1, idx)), 1000, seed);
            let all: Vec<usize> = (0..n).collect();
            let tol = tolerances.get(&metric).copied().unwrap_or(0.0);
            out.push(Comparison { model, task, metric, n, baseline: agg(0, &all), candidate: agg(1, &all), drop, tolerance: tol, test: "paired bootstrap (corpus)", p_value: p, regression: drop > tol && p < alpha, missing: false, flipped: vec![] });
            continue;
        }
        let binary = pairs.iter().all(|(_, b, c)| (b[0] == 0.0 || b[0] == 1.0) && (c[0] == 0.0 || c[0] == 1.0));
        if binary {
            let b = pairs.iter().filter(|(_, x, y)| x[0] == 1.0 && y[0] == 0.0).count();
            let c = pairs.iter().filter(|(_, x, y)| x[0] == 0.0 && y[0] == 1.0).count();
            let n = pairs.len();
            let bv = pairs.iter().map(|p| p.1[0]).sum::<f64>() / n as f64;
            let cv = pairs.iter().map(|p| p.2[0]).sum::<f64>() / n as f64;
            let tol = tolerances.get(&metric).copied().unwrap_or(0.0);
            let p = mcnemar_exact(b, c);
            let flipped = pairs.iter().filter(|(_, x, y)| x[0] == 1.0 && y[0] == 0.0).map(|p| p.0.clone()).collect();
            out.push(Comparison { model, task, metric, n, baseline: bv, candidate: cv, drop: bv - cv, tolerance: tol, test: "exact McNemar", p_value: p, regression: bv - cv > tol && p < alpha, missing: false, flipped });
        } else {
            out.push(continuous(&model, &task, &metric, &pairs, tolerances, alpha, seed));
        }
    }
    out
}

fn continuous(model: &str, task: &str, metric: &str, pairs: &[Paired], tolerances: &BTreeMap<String, f64>, alpha: f64, seed: u64) -> Comparison {
    let n = pairs.len();
    let sign = if lower_is_better(metric) { -1.0 } else { 1.0 };
    let mean = |idx: &[usize], side: usize| idx.iter().map(|&i| if side == 0 { pairs[i].1[0] } else { pairs[i].2[0] }).sum::<f64>() / idx.len().max(1) as f64;
    let (drop, p) = paired_bootstrap(n, &|idx| sign * (mean(idx, 0) - mean(idx, 1)), 1000, seed);
    let all: Vec<usize> = (0..n).collect();
    let tol = tolerances.get(metric).copied().unwrap_or(0.0);
    Comparison {
        model: model.into(),
        task: task.into(),
        metric: metric.into(),
        n,
        baseline: mean(&all, 0),
        candidate: mean(&all, 1),
        drop,
        tolerance: tol,
        test: "paired bootstrap",
        p_value: p,
        regression: drop > tol && p < alpha,
        missing: false,
        flipped: vec![],
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
        if c.missing {
            out.push_str(&format!(
                "\n      <failure type=\"missing\" message=\"{} was scored in the baseline ({:.4}) and not in the candidate\">the candidate run has no scored item of this model and task</failure>\n    ",
                xml(&c.metric),
                c.baseline
            ));
        } else if c.regression {
            out.push_str(&format!(
                "\n      <failure type=\"regression\" message=\"{} dropped by {:.4} (tolerance {}), p = {:.4} ({})\">{}</failure>\n    ",
                xml(&c.metric),
                c.drop,
                c.tolerance,
                c.p_value,
                c.test,
                xml(&format!("items right in the baseline and wrong now: {}", c.flipped.join(", ")))
            ));
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// A GitHub-flavoured markdown summary.
pub fn markdown(cs: &[Comparison], baseline: &str, candidate: &str) -> String {
    let failed = cs.iter().any(|c| c.failed());
    let mut out = format!("### llmeval gate: {}\n\nBaseline `{baseline}` → candidate `{candidate}`\n\n| model | task | metric | baseline | candidate | drop | test | p | verdict |\n|---|---|---|---|---|---|---|---|---|\n", if failed { "❌ regression" } else { "✅ pass" });
    for c in cs {
        let md = |s: &str| s.replace('|', "\\|");
        out.push_str(&format!("| {} | {} | {} | {:.4} | {:.4} | {:+.4} | {} | {:.4} | {} |\n", md(&c.model), md(&c.task), md(&c.metric), c.baseline, c.candidate, c.drop, c.test, c.p_value, if c.missing { "missing" } else if c.regression { "regression" } else { "ok" }));
    }
    for c in cs.iter().filter(|c| c.regression && !c.flipped.is_empty()) {
        out.push_str(&format!("\n{} / {} / {}: right before, wrong now: {}\n", md_escape(&c.model), md_escape(&c.task), c.metric, c.flipped.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")));
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
    fn mcnemar_by_hand() {
        // b = 0, c = 5: p = 2 · (1/32) = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b = 1, c = 9: p = 2 · (1 + 10)/1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!(mcnemar_exact(0, 2000) < 1e-300 || mcnemar_exact(0, 2000) == 0.0);
    }
}
