//! ⑤ Judges: metrics that call a model.
//!
//! A judge is a template (judges/*.toml, or a file next to the suite) rendered with the question
//! and the answers, sent to one of the suite's models, and a verdict parsed from what it says.
//! Pairwise judging always runs both orders; two different verdicts make the pair inconsistent,
//! counted as a tie (MT-bench's rule) and reported. A verdict that cannot be parsed is recorded as
//! `unparsed` with the raw text and left out of the score — never silently a tie.

use crate::error::{Error, Result};
use crate::model::{Context, GenRequest, Message, Model};
use crate::prompt::Item;
use crate::store::{Aggregate, Judgment, Store};
use crate::suite::{JudgeSpec, TaskConfig};
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// What a judge decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeKind {
    /// A 1–10 rating of one answer: `[[7]]`, else `[7]`.
    Single,
    /// `[[A]]`, `[[B]]` or `[[C]]` (tie) for two answers.
    Pairwise,
    /// PandaLM: the first line is `1`, `2` or `Tie`.
    Pandalm,
}

/// A judge template file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JudgeTemplate {
    /// Name (the file name without `.toml`).
    pub name: String,
    /// `single`, `pairwise` or `pandalm`.
    pub kind: JudgeKind,
    /// What the judge is for.
    #[serde(default)]
    pub description: Option<String>,
    /// System message sent with the prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// minijinja template: `question`, `reference`, `input`, and `answer` (single) or
    /// `answer_a`, `answer_b` (pairwise).
    pub prompt: String,
    /// Tokens the judge may write (default 1024).
    #[serde(default = "default_judge_tokens")]
    pub max_tokens: u32,
}

fn default_judge_tokens() -> u32 {
    1024
}

/// A loaded judge: its template and the template's content hash.
#[derive(Debug, Clone)]
pub struct Judge {
    pub template: JudgeTemplate,
    pub hash: String,
    pub source: String,
}

const BUILT_IN: &[(&str, &str)] = &[
    ("single", include_str!("../judges/single.toml")),
    ("single-reference", include_str!("../judges/single-reference.toml")),
    ("pairwise", include_str!("../judges/pairwise.toml")),
    ("pairwise-reference", include_str!("../judges/pairwise-reference.toml")),
    ("pandalm", include_str!("../judges/pandalm.toml")),
];

/// Finds judge `name`: `judges/NAME.toml` or `NAME.toml` next to the suite, `judges/NAME.toml` in
/// the working directory, then the built-in judges.
pub fn load_judge(name: &str, suite_dir: &Path) -> Result<Judge> {
    let candidates = [suite_dir.join("judges").join(format!("{name}.toml")), suite_dir.join(format!("{name}.toml")), Path::new("judges").join(format!("{name}.toml"))];
    let (text, source) = match candidates.iter().find(|p| p.is_file()) {
        Some(p) => (std::fs::read_to_string(p).map_err(|source| Error::Read { path: p.clone(), cause: source })?, p.display().to_string()),
        None => match BUILT_IN.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => (t.to_string(), format!("built-in judge {name}")),
            None => {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                return Err(Error::config(name, format!("unknown judge {name:?}: no judges/{name}.toml next to the suite, and the built-in judges are {}", names.join(", "))));
            }
        },
    };
    let template: JudgeTemplate = toml::from_str(&text).map_err(|e| {
        let (line, message) = crate::util::toml_error(&text, &e);
        Error::config(line.map_or_else(|| source.clone(), |l| format!("{source}:{l}")), message)
    })?;
    let env = crate::prompt::environment();
    let t = env.template_from_str(&template.prompt).map_err(|e| Error::config(&source, format!("prompt: bad template: {}", crate::prompt::jinja_message(&e))))?;
    // a variable the judge phase does not give would fail only after every answer is generated
    let given = template_variables(template.kind);
    let mut unknown: Vec<String> = t.undeclared_variables(false).into_iter().filter(|v| !given.contains(&v.as_str()) && !env.globals().any(|(g, _)| g == v)).collect();
    if !unknown.is_empty() {
        unknown.sort();
        let slip = if unknown.len() == 1 { crate::util::did_you_mean(&unknown[0], given.iter().copied()) } else { String::new() };
        return Err(Error::config(&source, format!("prompt: unknown variable(s) {}{slip}; a {} judge's template can use {}", unknown.join(", "), kind_name(template.kind), given.join(", "))));
    }
    Ok(Judge { hash: crate::util::sha256_hex(text.as_bytes())[..16].to_string(), template, source })
}

/// `kind` as a judge file writes it.
fn kind_name(kind: JudgeKind) -> &'static str {
    match kind {
        JudgeKind::Single => "single",
        JudgeKind::Pairwise => "pairwise",
        JudgeKind::Pandalm => "pandalm",
    }
}

/// The variables the judge phase gives a template of `kind`.
fn template_variables(kind: JudgeKind) -> &'static [&'static str] {
    match kind {
        JudgeKind::Single => &["question", "answer", "reference", "input"],
        JudgeKind::Pairwise | JudgeKind::Pandalm => &["question", "answer_a", "answer_b", "reference", "input"],
    }
}

/// A parsed verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Rating(f64),
    /// The first answer shown is better.
    A,
    /// The second answer shown is better.
    B,
    Tie,
}

fn re(cell: &'static OnceLock<Regex>, p: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(p).expect("valid regex"))
}

/// A 1–10 rating: the first `[[x]]`, else the first `[x]`; out of range is unparsed.
pub fn parse_rating(text: &str) -> Option<f64> {
    static TWO: OnceLock<Regex> = OnceLock::new();
    static ONE: OnceLock<Regex> = OnceLock::new();
    let v = re(&TWO, r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]").captures(text).or_else(|| re(&ONE, r"\[\s*(\d+(?:\.\d+)?)\s*\]").captures(text))?[1].parse::<f64>().ok()?;
    (1.0..=10.0).contains(&v).then_some(v)
}

/// `[[A]]`, `[[B]]` or `[[C]]`; a text holding more than one of them is ambiguous (unparsed).
pub fn parse_pairwise(text: &str) -> Option<Verdict> {
    let found: Vec<Verdict> = [("[[A]]", Verdict::A), ("[[B]]", Verdict::B), ("[[C]]", Verdict::Tie)].into_iter().filter(|(t, _)| text.contains(t)).map(|(_, v)| v).collect();
    (found.len() == 1).then(|| found[0])
}

/// PandaLM: the first non-empty line is `1`, `2` or `Tie`.
pub fn parse_pandalm(text: &str) -> Option<Verdict> {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let first = first.trim_end_matches(['.', ':']).trim();
    match first.to_ascii_lowercase().as_str() {
        "1" => Some(Verdict::A),
        "2" => Some(Verdict::B),
        "tie" => Some(Verdict::Tie),
        _ => None,
    }
}

pub fn parse(kind: JudgeKind, text: &str) -> Option<Verdict> {
    match kind {
        JudgeKind::Single => parse_rating(text).map(Verdict::Rating),
        JudgeKind::Pairwise => parse_pairwise(text),
        JudgeKind::Pandalm => parse_pandalm(text),
    }
}

/// A pair judged in both orders, from the candidate's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    Win,
    Loss,
    Tie,
    /// The two orders disagree (counted as a tie); `first_slot` when both favoured whichever
    /// answer was shown first.
    Inconsistent { first_slot: bool, second_slot: bool },
    Unparsed,
}

/// Combines order 1 (candidate shown as A) and order 2 (candidate shown as B).
pub fn combine(order1: Option<Verdict>, order2: Option<Verdict>) -> PairOutcome {
    let (Some(v1), Some(v2)) = (order1, order2) else { return PairOutcome::Unparsed };
    // Each order's winner, in candidate terms: +1 candidate, -1 other, 0 tie.
    let side = |v: Verdict, candidate_is_a: bool| match (v, candidate_is_a) {
        (Verdict::A, true) | (Verdict::B, false) => 1,
        (Verdict::A, false) | (Verdict::B, true) => -1,
        _ => 0,
    };
    let (w1, w2) = (side(v1, true), side(v2, false));
    if w1 == w2 {
        return match w1 {
            1 => PairOutcome::Win,
            -1 => PairOutcome::Loss,
            _ => PairOutcome::Tie,
        };
    }
    PairOutcome::Inconsistent { first_slot: v1 == Verdict::A && v2 == Verdict::A, second_slot: v1 == Verdict::B && v2 == Verdict::B }
}

impl PairOutcome {
    /// Score of the candidate: win 1, tie or inconsistent 0.5, loss 0.
    pub fn score(self) -> Option<f64> {
        match self {
            PairOutcome::Win => Some(1.0),
            PairOutcome::Loss => Some(0.0),
            PairOutcome::Tie | PairOutcome::Inconsistent { .. } => Some(0.5),
            PairOutcome::Unparsed => None,
        }
    }
}

/// Cohen's kappa of two raters' labels.
pub fn cohen_kappa(pairs: &[(String, String)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let po = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let mut ca: BTreeMap<&str, f64> = BTreeMap::new();
    let mut cb: BTreeMap<&str, f64> = BTreeMap::new();
    for (a, b) in pairs {
        *ca.entry(a).or_default() += 1.0;
        *cb.entry(b).or_default() += 1.0;
    }
    let pe: f64 = ca.iter().map(|(k, x)| x / n * cb.get(k).copied().unwrap_or(0.0) / n).sum();
    if (1.0 - pe).abs() < 1e-12 {
        return None;
    }
    Some((po - pe) / (1.0 - pe))
}

/// Agreement between judge and human labels, as FastChat's `compute_agreement`: the share of equal
/// labels; without ties, pairs where either says "tie" are left out. Returns (agreement, n).
pub fn agreement(pairs: &[(String, String)], include_tie: bool) -> (Option<f64>, usize) {
    let kept: Vec<&(String, String)> = pairs.iter().filter(|(j, h)| include_tie || (j != "tie" && h != "tie")).collect();
    if kept.is_empty() {
        return (None, 0);
    }
    (Some(kept.iter().filter(|(j, h)| j == h).count() as f64 / kept.len() as f64), kept.len())
}

/// The suite metric of a judge; its per-sample statistics are written by [`run_judges`].
pub struct JudgeMetric(pub &'static str);

impl crate::metric::Metric for JudgeMetric {
    fn name(&self) -> &'static str {
        self.0
    }
    fn score(&self, _: &Item, _: &crate::metric::Evidence) -> std::result::Result<Vec<f64>, String> {
        Err("scored by the judge phase".into())
    }
}

/// One judge call to make.
struct Call {
    key: Judgment,
    request: GenRequest,
}

fn render(judge: &Judge, vars: &[(&str, &str)]) -> std::result::Result<String, String> {
    let env = crate::prompt::environment();
    let t = env.template_from_str(&judge.template.prompt).map_err(|e| crate::prompt::jinja_message(&e))?;
    let ctx: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    t.render(ctx).map_err(|e| crate::prompt::jinja_message(&e))
}

/// Everything the judge phase needs to know about one task.
pub struct TaskJudging<'a> {
    pub task: &'a TaskConfig,
    pub items: &'a [Item],
    pub spec: JudgeSpec,
    /// The evaluated models, in suite order.
    pub models: Vec<String>,
}

/// Runs the judge calls of one task that are not stored yet, then writes each judged sample's
/// score and returns the reliability aggregates.
pub fn run_judges(store: &mut Store, run_id: &str, suite_dir: &Path, tj: &TaskJudging, judge_model: &dyn Model, judge_name: &str, no_cache: bool) -> Result<Vec<Aggregate>> {
    check_human_labels(tj)?;
    let judge = load_judge(&tj.spec.judge, suite_dir)?;
    let metric = tj.spec.metric_name();
    let samples = store.samples(run_id)?;
    let answer = |model: &str, item: usize| -> Option<String> {
        samples.iter().find(|s| s.model == model && s.task == tj.task.name && s.item == item as i64 && s.error.is_none()).and_then(|s| s.answer.clone().or(s.response.clone()))
    };
    let done = store.judgments(run_id, &tj.task.name, &metric)?;
    let is_done = |k: &Judgment| done.iter().any(|d| d.item == k.item && d.model == k.model && d.opponent == k.opponent && d.order == k.order && d.error.is_none());
    let identity = judge_model.identity();
    let make = |prompt: String| GenRequest {
        context: Context::Chat(
            judge.template.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).chain(std::iter::once(Message { role: "user".into(), content: prompt })).collect(),
        ),
        max_tokens: tj.spec.max_tokens.unwrap_or(judge.template.max_tokens),
        temperature: 0.0,
        top_p: None,
        seed: None,
        stop: vec![],
    };
    // Pairs: (candidate, opponent). Baseline mode: every evaluated model against the baseline;
    // all-pairs: every unordered pair once.
    let pairs: Vec<(String, String)> = match (judge.template.kind, &tj.spec.baseline) {
        (JudgeKind::Single, _) => tj.models.iter().map(|m| (m.clone(), String::new())).collect(),
        (_, Some(b)) => tj.models.iter().filter(|m| *m != b).map(|m| (m.clone(), b.clone())).collect(),
        (_, None) => {
            let mut v = Vec::new();
            for (i, a) in tj.models.iter().enumerate() {
                for b in &tj.models[i + 1..] {
                    v.push((a.clone(), b.clone()));
                }
            }
            v
        }
    };
    // A later turn of a conversation is judged with what came before it (the candidate's own
    // earlier answers) in the question, for single-answer grading.
    let (base, turn) = match tj.task.name.rsplit_once("/turn-") {
        Some((b, n)) => (b.to_string(), n.parse::<usize>().unwrap_or(1).saturating_sub(1)),
        None => (tj.task.name.clone(), 0),
    };
    let earlier = |model: &str, item: &Item| -> String {
        let mut text = String::new();
        for j in 0..turn.min(item.turns.len()) {
            let name = if j == 0 { base.clone() } else { format!("{base}/turn-{}", j + 1) };
            let a = samples.iter().find(|s| s.model == model && s.task == name && s.item == item.index as i64).and_then(|s| s.response.clone()).unwrap_or_default();
            text.push_str(&format!("[Turn {}] User: {}\n[Turn {}] Assistant: {}\n\n", j + 1, item.turns[j], j + 1, a));
        }
        text
    };
    let mut calls = Vec::new();
    for item in tj.items {
        let question = item.prompt.as_str();
        let reference = item.target.as_deref().unwrap_or("");
        for (cand, opp) in &pairs {
            let Some(a) = answer(cand, item.index) else { continue };
            let orders: Vec<(i64, String)> = if judge.template.kind == JudgeKind::Single {
                let q = if turn > 0 { format!("{}[Turn {}] User: {question}", earlier(cand, item), turn + 1) } else { question.to_string() };
                vec![(1, render(&judge, &[("question", &q), ("answer", &a), ("reference", reference), ("input", "")]).map_err(|m| Error::config(&judge.source, m))?)]
            } else {
                let Some(b) = answer(opp, item.index) else { continue };
                // A later turn: each answer is shown with the assistant's own conversation so far.
                let (q, a, b) = if turn > 0 {
                    let conv = |m: &str, ans: &str| format!("{}[Turn {}] User: {question}\n[Turn {}] Assistant: {ans}", earlier(m, item), turn + 1, turn + 1);
                    (format!("(Judge the answers to turn {} of this conversation.) {question}", turn + 1), conv(cand, &a), conv(opp, &b))
                } else {
                    (question.to_string(), a, b)
                };
                let mut v = Vec::new();
                for (order, (x, y)) in [(1, (&a, &b)), (2, (&b, &a))] {
                    v.push((order, render(&judge, &[("question", &q), ("answer_a", x), ("answer_b", y), ("reference", reference), ("input", "")]).map_err(|m| Error::config(&judge.source, m))?));
                }
                v
            };
            for (order, prompt) in orders {
                let key = Judgment {
                    task: tj.task.name.clone(),
                    metric: metric.clone(),
                    item: item.index as i64,
                    model: cand.clone(),
                    opponent: opp.clone(),
                    order,
                    judge_model: judge_name.to_string(),
                    template: judge.template.name.clone(),
                    template_hash: judge.hash.clone(),
                    prompt: prompt.clone(),
                    raw: None,
                    verdict: None,
                    error: None,
                };
                if !is_done(&key) {
                    calls.push(Call { key, request: make(prompt) });
                }
            }
        }
    }
    // Cached answers first; the rest in one batch.
    let mut send: Vec<Call> = Vec::new();
    for c in calls {
        let ck = crate::store::cache_key(&identity, "generate", &c.request);
        match store.cached(&ck, run_id, no_cache)?.and_then(|text| serde_json::from_str::<crate::model::Generation>(&text).ok()) {
            Some(g) => store.put_judgment(run_id, &finish(c.key, &judge, Ok(g.text)))?,
            None => send.push(c),
        }
    }
    let reqs: Vec<GenRequest> = send.iter().map(|c| c.request.clone()).collect();
    let mut failure: Option<Error> = None;
    judge_model.generate(&reqs, &mut |i, outcome| {
        if failure.is_some() {
            return;
        }
        let c = &send[i];
        if let Ok(g) = &outcome.result {
            let ck = crate::store::cache_key(&identity, "generate", &c.request);
            if let Err(e) = store.put_cached(&ck, run_id, "generate", &identity, &serde_json::to_string(g).expect("JSON")) {
                failure = Some(e);
                return;
            }
        }
        let j = finish(c.key.clone(), &judge, outcome.result.map(|g| g.text));
        if let Err(e) = store.put_judgment(run_id, &j) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(message) = judge_model.halted() {
        return Err(Error::Model { model: judge_name.to_string(), message });
    }
    score_task(store, run_id, tj, &judge, &metric)
}

fn finish(mut key: Judgment, judge: &Judge, result: std::result::Result<String, String>) -> Judgment {
    match result {
        Ok(text) => {
            key.verdict = Some(match parse(judge.template.kind, &text) {
                Some(Verdict::Rating(r)) => format!("{r}"),
                Some(Verdict::A) => "A".into(),
                Some(Verdict::B) => "B".into(),
                Some(Verdict::Tie) => "tie".into(),
                None => "unparsed".into(),
            });
            key.raw = Some(text);
        }
        Err(e) => key.error = Some(e),
    }
    key
}

fn verdict_of(s: &str) -> Option<Verdict> {
    match s {
        "A" => Some(Verdict::A),
        "B" => Some(Verdict::B),
        "tie" => Some(Verdict::Tie),
        "unparsed" => None,
        r => r.parse().ok().map(Verdict::Rating),
    }
}

/// A human label as a vote on the pair (`cand`, `opp`), as FastChat's `compute_agreement` reads
/// votes: `"tie"` for a tie (`tie` or `tie (bothbad)`, any case), the winner's name for a model of
/// the pair, and `None` — no vote on this pair — for an empty label or another model.
fn human_vote(label: &str, cand: &str, opp: &str) -> Option<String> {
    let l = label.trim();
    if l.eq_ignore_ascii_case("tie") || l.eq_ignore_ascii_case("tie (bothbad)") {
        Some("tie".into())
    } else if l == cand || l == opp {
        Some(l.into())
    } else {
        None
    }
}

/// Every human label must name a model of the run, a tie, or be empty (no vote): anything else
/// (a typo, FastChat's `model_a`) would count as a disagreement with the judge.
pub fn check_human_labels(tj: &TaskJudging) -> Result<()> {
    let mut models: Vec<&str> = tj.models.iter().map(String::as_str).collect();
    models.extend(tj.spec.baseline.as_deref().filter(|b| !models.contains(b)));
    for it in tj.items {
        let Some(h) = &it.human else { continue };
        let l = h.trim();
        if !l.is_empty() && human_vote(l, "", "").is_none() && !models.contains(&l) {
            return Err(Error::data(
                format!("task {:?}, item {}", tj.task.name, it.id),
                format!("human-label gives {h:?}, which names no model of this run ({}); a human label is the winning model's name, `tie` (or `tie (bothbad)`), or empty for no vote", models.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Writes per-sample judge scores and returns the task's reliability aggregates.
fn score_task(store: &mut Store, run_id: &str, tj: &TaskJudging, judge: &Judge, metric: &str) -> Result<Vec<Aggregate>> {
    let judgments = store.judgments(run_id, &tj.task.name, metric)?;
    let mut per_sample: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    let (mut parsed_pairs, mut consistent, mut inconsistent, mut first_slot, mut unparsed, mut ties, mut total) = (0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let mut human_pairs: Vec<(String, String)> = Vec::new();
    let errors = judgments.iter().filter(|j| j.error.is_some()).count();
    if judge.template.kind == JudgeKind::Single {
        for j in judgments.iter().filter(|j| j.error.is_none()) {
            total += 1;
            match j.verdict.as_deref().and_then(verdict_of) {
                Some(Verdict::Rating(r)) => per_sample.entry((j.model.clone(), j.item)).or_default().push(r),
                _ => unparsed += 1,
            }
        }
    } else {
        let mut by_pair: BTreeMap<(i64, String, String), [Option<&crate::store::Judgment>; 2]> = BTreeMap::new();
        for j in judgments.iter().filter(|j| j.error.is_none()) {
            by_pair.entry((j.item, j.model.clone(), j.opponent.clone())).or_default()[(j.order - 1).clamp(0, 1) as usize] = Some(j);
        }
        for ((item, cand, opp), [o1, o2]) in &by_pair {
            let (Some(o1), Some(o2)) = (o1, o2) else { continue };
            total += 1;
            let outcome = combine(o1.verdict.as_deref().and_then(verdict_of), o2.verdict.as_deref().and_then(verdict_of));
            match outcome {
                PairOutcome::Unparsed => {
                    unparsed += 1;
                    continue;
                }
                PairOutcome::Inconsistent { first_slot: f, .. } => {
                    inconsistent += 1;
                    first_slot += usize::from(f);
                }
                PairOutcome::Tie => {
                    consistent += 1;
                    ties += 1;
                }
                _ => consistent += 1,
            }
            parsed_pairs += 1;
            let s = outcome.score().expect("parsed");
            per_sample.entry((cand.clone(), *item)).or_default().push(s);
            per_sample.entry((opp.clone(), *item)).or_default().push(1.0 - s);
            let human = tj.items.iter().find(|it| it.index as i64 == *item).and_then(|it| it.human.as_deref());
            if let Some(h) = human.and_then(|h| human_vote(h, cand, opp)) {
                let judge_label = match outcome {
                    PairOutcome::Win => cand.clone(),
                    PairOutcome::Loss => opp.clone(),
                    _ => "tie".to_string(),
                };
                human_pairs.push((judge_label, h));
            }
        }
    }
    // A baseline scores against itself nothing: only the evaluated candidates get a value.
    for ((model, item), scores) in &per_sample {
        if tj.spec.baseline.as_deref() == Some(model.as_str()) {
            continue;
        }
        let v = scores.iter().sum::<f64>() / scores.len() as f64;
        store.set_sample_score(run_id, model, &tj.task.name, *item, metric, v)?;
    }
    let mut out = Vec::new();
    let mut add = |name: &str, value: Option<f64>, n: usize| {
        let s = value.map(|v| crate::stats::Summary { value: v, stderr: None, ci95: None, n });
        out.push(Aggregate {
            model: format!("judge:{}", tj.spec.model),
            task: tj.task.name.clone(),
            category: String::new(),
            metric: format!("{metric}:{name}"),
            value: s.map(|s| s.value),
            stderr: None,
            ci95: None,
            n: n as i64,
            errors: errors as i64,
        });
    };
    let frac = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    add("parse-failure-rate", frac(unparsed, total), total);
    if judge.template.kind != JudgeKind::Single {
        add("position-consistency", frac(consistent, parsed_pairs), parsed_pairs);
        add("position-bias", frac(first_slot, inconsistent), inconsistent);
        add("tie-rate", frac(ties + inconsistent, parsed_pairs), parsed_pairs);
        if !human_pairs.is_empty() {
            let (a, n) = agreement(&human_pairs, true);
            add("human-agreement", a, n);
            let (a, n) = agreement(&human_pairs, false);
            add("human-agreement-without-ties", a, n);
            add("cohen-kappa", cohen_kappa(&human_pairs), human_pairs.len());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings() {
        assert_eq!(parse_rating("Good answer.\nRating: [[7]]"), Some(7.0));
        assert_eq!(parse_rating("Rating: [[8.5]] (was [[3]] before)"), Some(8.5));
        assert_eq!(parse_rating("I'd say [6] overall."), Some(6.0));
        assert_eq!(parse_rating("Rating: [[ 9 ]]"), Some(9.0));
        assert_eq!(parse_rating("Rating: [[11]]"), None, "out of range");
        assert_eq!(parse_rating("Rating: [[0]]"), None, "out of range");
        assert_eq!(parse_rating("Rating: 7/10"), None);
        assert_eq!(parse_rating("see reference [2] and [[4]]"), Some(4.0), "[[x]] wins over [x]");
    }

    #[test]
    fn pairwise_and_pandalm_verdicts() {
        assert_eq!(parse_pairwise("Assistant A is clearer.\n\n[[A]]"), Some(Verdict::A));
        assert_eq!(parse_pairwise("Final verdict: [[C]]"), Some(Verdict::Tie));
        assert_eq!(parse_pairwise("[[A]] or maybe [[B]]"), None, "ambiguous");
        assert_eq!(parse_pairwise("A is better"), None);
        assert_eq!(parse_pandalm("2\n\nReason: Response 2 is correct.\n\nReference: ..."), Some(Verdict::B));
        assert_eq!(parse_pandalm("\n Tie \nReason: both fine"), Some(Verdict::Tie));
        assert_eq!(parse_pandalm("1."), Some(Verdict::A));
        assert_eq!(parse_pandalm("Response 1 is better"), None);
    }

    #[test]
    fn swaps_and_inconsistency() {
        use PairOutcome::*;
        // Order 1 shows the candidate as A, order 2 as B.
        assert_eq!(combine(Some(Verdict::A), Some(Verdict::B)), Win);
        assert_eq!(combine(Some(Verdict::B), Some(Verdict::A)), Loss);
        assert_eq!(combine(Some(Verdict::Tie), Some(Verdict::Tie)), Tie);
        assert_eq!(combine(Some(Verdict::A), Some(Verdict::A)), Inconsistent { first_slot: true, second_slot: false });
        assert_eq!(combine(Some(Verdict::B), Some(Verdict::B)), Inconsistent { first_slot: false, second_slot: true });
        assert_eq!(combine(Some(Verdict::A), Some(Verdict::Tie)), Inconsistent { first_slot: false, second_slot: false });
        assert_eq!(combine(None, Some(Verdict::A)), Unparsed);
        assert_eq!(Inconsistent { first_slot: true, second_slot: false }.score(), Some(0.5));
    }

    #[test]
    fn agreement_and_kappa_by_hand() {
        let p = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        // votes as FastChat reads them; no vote for an empty label or a model outside the pair
        let v = |l: &str| human_vote(l, "m1", "m2");
        assert_eq!([v(" m1 "), v("m2"), v("Tie"), v("tie (bothbad)"), v(""), v("m3")], [Some("m1".into()), Some("m2".into()), Some("tie".into()), Some("tie".into()), None, None]);
        // 10 pairs: judge vs human.
        let pairs = p(&[("x", "x"), ("x", "x"), ("x", "y"), ("y", "y"), ("y", "y"), ("y", "x"), ("tie", "x"), ("tie", "tie"), ("x", "tie"), ("y", "y")]);
        let (a, n) = agreement(&pairs, true);
        assert_eq!((a, n), (Some(6.0 / 10.0), 10));
        let (a, n) = agreement(&pairs, false);
        // Pairs without any tie: 7, of which 5 agree.
        assert_eq!((a, n), (Some(5.0 / 7.0), 7));
        // Kappa: po = 0.6; judge x 4, y 4, tie 2; human x 4, y 4, tie 2 → pe = .16+.16+.04 = .36.
        let k = cohen_kappa(&pairs).unwrap();
        assert!((k - (0.6 - 0.36) / (1.0 - 0.36)).abs() < 1e-12, "{k}");
    }

    #[test]
    fn built_in_judges_load() {
        for (name, _) in BUILT_IN {
            let j = load_judge(name, Path::new("/nonexistent")).unwrap();
            assert_eq!(&j.template.name, name);
        }
        assert!(load_judge("nope", Path::new("/nonexistent")).unwrap_err().to_string().contains("unknown judge"));
    }
}
