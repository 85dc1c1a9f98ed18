//! ⑦ Results as the views read them: a leaderboard (models × task metrics, an overall figure and
//! an arena rating), judge reliability, arena ratings and the samples behind every cell, for a
//! chosen set of runs. The HTML report reads it; so will the terminal leaderboard.
//!
//! Design decision: the read model shows the stored aggregates exactly as `run` computed them
//! (value, 95% interval, n, errors) and derives only two figures, each defined here once.
//! **Overall** is the mean, over the tasks counted, of each task's *primary* metric (the first of
//! its `metrics` in the suite, or its kind's first default) scaled to 0–1 by the metric's fixed
//! range — exact-match, contains, F1, acc, ROUGE, distinct-n and a pairwise judge's win rate are
//! 0–1; BLEU, chrF and the ChatGLM metrics 0–100; a single-answer judge's rating 1–10, scaled as
//! (r − 1)/9. A task whose primary metric has no fixed range (log-likelihood, perplexities, bits
//! per byte) is not counted, and a model without a value on a counted task has no overall, so
//! every overall shown averages the same tasks. **Arena** ratings are Bradley-Terry with seeded
//! bootstrap intervals (`arena::rate`) over the battles judged in the chosen runs.

use crate::arena::{self, HumanAgreement};
use crate::error::{Error, Result};
use crate::store::{Aggregate, JudgedPair, Run, Store};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// Metrics whose per-sample score is right (1) or wrong (0).
const RIGHT_OR_WRONG: &[&str] = &["exact-match", "contains", "acc", "acc-norm"];

/// The fixed range of a metric's values, or `None` when it has none. `pairwise_judge` says
/// whether a judge metric compares two answers (a win rate) rather than rating one (1–10).
pub fn metric_range(metric: &str, pairwise_judge: bool) -> Option<(f64, f64)> {
    match metric {
        "exact-match" | "contains" | "f1" | "acc" | "acc-norm" | "distinct-1" | "distinct-2" => Some((0.0, 1.0)),
        "bleu" | "bleu-intl" | "bleu-zh" | "bleu-char" | "bleu-none" | "chrf" | "chrf++" => Some((0.0, 100.0)),
        m if m.starts_with("rouge") => Some((0.0, 1.0)),
        m if m.starts_with("chatglm-") => Some((0.0, 100.0)),
        m if m.starts_with("judge-") => Some(if pairwise_judge { (0.0, 1.0) } else { (1.0, 10.0) }),
        _ => None,
    }
}

/// The runs a view shows: those named (`RUN`: id, unique prefix, tag or `latest`, in the order
/// given, each once), else the latest finished run (complete or errored; an interrupted run is
/// only shown when named) of every suite, or of `suite` only.
pub fn select_runs(store: &Store, keys: &[String], suite: Option<&str>) -> Result<Vec<Run>> {
    let mut out: Vec<Run> = Vec::new();
    if !keys.is_empty() {
        for k in keys {
            let mut r = store.resolve_run(k)?;
            store.show_statuses(std::slice::from_mut(&mut r))?;
            if let Some(s) = suite.filter(|s| *s != r.suite) {
                return Err(Error::Usage(format!("run {k:?} ({}) is of suite {:?}, not {s:?}", r.id, r.suite)));
            }
            if !out.iter().any(|o| o.id == r.id) {
                out.push(r);
            }
        }
        return Ok(out);
    }
    let all = store.runs()?;
    if let Some(s) = suite
        && !all.iter().any(|r| r.suite == s)
    {
        let mut names: Vec<&str> = all.iter().map(|r| r.suite.as_str()).collect();
        names.sort();
        names.dedup();
        return Err(Error::Usage(format!("no run of suite {s:?} in {}; its suites: {}", store.path().display(), if names.is_empty() { "none".into() } else { names.join(", ") })));
    }
    // Newest first, so the first finished run met of a suite is its latest.
    for r in all {
        if r.status != "running" && suite.is_none_or(|s| s == r.suite) && !out.iter().any(|o| o.suite == r.suite) {
            out.push(r);
        }
    }
    if out.is_empty() {
        let what = suite.map_or("no finished run".to_string(), |s| format!("no finished run of suite {s:?}"));
        return Err(Error::Store { path: store.path().to_path_buf(), message: format!("{what}; run a suite first, or name an unfinished run with --runs") });
    }
    out.sort_by(|a, b| a.suite.cmp(&b.suite).then(a.started_at.total_cmp(&b.started_at)));
    Ok(out)
}

/// A run with what the views need of it from the store.
#[derive(Debug, Clone)]
pub struct RunData {
    pub run: Run,
    pub aggregates: Vec<Aggregate>,
    /// `(task, metric)` of the judge metrics that compared pairs of answers.
    pub pairwise: BTreeSet<(String, String)>,
    /// Task → its primary metric, from the suite stored with the run.
    pub primary: HashMap<String, String>,
    /// `(model, task)` pairs with samples: a model evaluated on a task has a row and the task's
    /// primary column even when no metric has a value.
    pub evaluated: Vec<(String, String)>,
}

/// Each task's primary metric from a run's stored suite: the first of its `metrics`, or its
/// kind's first default. Tasks whose entry cannot be read are left out (their first reported
/// metric is used).
pub fn primary_metrics(config: &serde_json::Value) -> HashMap<String, String> {
    use crate::suite::{MetricSpec, TaskKind};
    let mut out = HashMap::new();
    for t in config["tasks"].as_array().into_iter().flatten() {
        let Some(name) = t["name"].as_str() else { continue };
        let first = match t["metrics"].as_array().and_then(|m| m.first()) {
            Some(m) => match serde_json::from_value::<toml::Value>(m.clone()).ok().and_then(|v| MetricSpec::parse(&v).ok()) {
                Some(MetricSpec::Name(n)) => Some(n),
                Some(MetricSpec::Judge(j)) => Some(j.metric_name()),
                None => None,
            },
            None => serde_json::from_value::<TaskKind>(t["kind"].clone()).ok().and_then(|k| crate::metric::names_for(k).0.first().map(|m| m.to_string())),
        };
        if let Some(m) = first {
            out.insert(name.to_string(), m);
        }
    }
    out
}

/// Reads the aggregates and judge kinds of `runs`.
pub fn load(store: &Store, runs: &[Run]) -> Result<Vec<RunData>> {
    runs.iter()
        .map(|run| {
            let pairwise = store.judgments(&run.id, "", "")?.into_iter().filter(|j| !j.opponent.is_empty()).map(|j| (j.task, j.metric)).collect();
            Ok(RunData { run: run.clone(), aggregates: store.aggregates(&run.id)?, pairwise, primary: primary_metrics(&run.config), evaluated: store.sample_keys(&run.id)? })
        })
        .collect()
}

/// One leaderboard column: a task's metric, for the whole task (`category` empty) or one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Column {
    pub suite: String,
    pub task: String,
    pub metric: String,
    pub category: String,
    /// Shown name: `task · metric` (`suite/task` when two suites share the task name), with
    /// ` / category`.
    pub label: String,
    /// The task's primary metric (its first).
    pub primary: bool,
    /// The metric's fixed range ([`metric_range`]).
    pub range: Option<(f64, f64)>,
    pub higher_is_better: bool,
}

/// A value with as many decimals as its scale needs: three on a metric bounded by 1, two otherwise.
pub fn format_value(v: f64, range: Option<(f64, f64)>) -> String {
    match range {
        Some((_, hi)) if hi <= 1.0 => format!("{v:.3}"),
        _ => format!("{v:.2}"),
    }
}

impl Column {
    /// `value` scaled to 0–1 by the metric's range (1 best), when it has one.
    pub fn normalize(&self, value: f64) -> Option<f64> {
        let (lo, hi) = self.range?;
        let x = ((value - lo) / (hi - lo)).clamp(0.0, 1.0);
        Some(if self.higher_is_better { x } else { 1.0 - x })
    }
}

/// A model's result on one column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// `None` when no item could be scored (all errored, or no metric value: a judge that never
    /// gave a parsable verdict).
    pub value: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub n: i64,
    pub errors: i64,
    pub run_id: String,
}

impl Cell {
    /// The cell as the views show it: `value ± half the 95% interval` (the value alone without an
    /// interval, `no value` without a value), then `(N err)` when items errored.
    pub fn text(&self, column: &Column) -> String {
        let text = match (self.value, self.ci_low.zip(self.ci_high)) {
            (Some(v), Some((lo, hi))) => format!("{} ± {}", format_value(v, column.range), format_value((hi - lo) / 2.0, column.range)),
            (Some(v), None) => format_value(v, column.range),
            (None, _) => "no value".into(),
        };
        if self.errors > 0 { format!("{text} ({} err)", self.errors) } else { text }
    }
}

/// A model's arena rating.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArenaRating {
    pub model: String,
    pub rating: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// FastChat's rank: 1 + models whose interval lies wholly above this one's.
    pub rank: usize,
    pub battles: usize,
}

/// One leaderboard row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub model: String,
    /// Set when the chosen runs hold two runs of one suite: the row is this model in this run.
    pub run_id: Option<String>,
    /// `model`, or `model @ run` for a row of one run.
    pub label: String,
    /// One per column.
    pub cells: Vec<Option<Cell>>,
    pub overall: Option<f64>,
    pub arena: Option<ArenaRating>,
}

/// What a leaderboard can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Model,
    Overall,
    Arena,
    Column(usize),
}

/// Models × task metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leaderboard {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    /// The columns that overall averages (whole-task primary metrics with a fixed range).
    pub overall_columns: Vec<usize>,
}

impl Leaderboard {
    /// Builds the leaderboard of `data` (runs in order); rows by overall, then arena rating, then
    /// name. Judge reliability rows (`judge:NAME`) are not models and are left out.
    pub fn build(data: &[RunData], arena: Option<&Arena>) -> Leaderboard {
        let mut runs_of_suite: HashMap<&str, usize> = HashMap::new();
        for d in data {
            *runs_of_suite.entry(d.run.suite.as_str()).or_default() += 1;
        }
        let mut suites_of_task: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for d in data {
            for task in d.aggregates.iter().map(|a| &a.task).chain(d.evaluated.iter().map(|e| &e.1)) {
                suites_of_task.entry(task.as_str()).or_default().insert(d.run.suite.as_str());
            }
        }
        let shared = |task: &str| suites_of_task.get(task).is_some_and(|s| s.len() > 1);
        // Columns in order of first appearance, grouped by task, whole-task columns first.
        let mut groups: Vec<(String, String)> = Vec::new();
        let mut columns: Vec<Column> = Vec::new();
        // (suite, task) → (primary metric, a run that has the task).
        let mut primary: HashMap<(String, String), (String, String)> = HashMap::new();
        let mut rows: Vec<Row> = Vec::new();
        // (row, (suite, task, metric, category), cell)
        type Placed = (usize, (String, String, String, String), Cell);
        let mut cells: Vec<Placed> = Vec::new();
        for d in data {
            let suite = d.run.suite.clone();
            let split = runs_of_suite[suite.as_str()] > 1;
            let row_of = |rows: &mut Vec<Row>, model: &str| -> usize {
                let (run_id, label) = if split { (Some(d.run.id.clone()), format!("{model} @ {}", d.run.id)) } else { (None, model.to_string()) };
                match rows.iter().position(|r| r.model == model && r.run_id == run_id) {
                    Some(i) => i,
                    None => {
                        rows.push(Row { model: model.to_string(), run_id, label, cells: Vec::new(), overall: None, arena: None });
                        rows.len() - 1
                    }
                }
            };
            // The suite names the primary metric (a turn of a multi-turn task: the task's).
            let configured = |task: &str| d.primary.get(task.split_once("/turn-").map_or(task, |(b, _)| b));
            for a in d.aggregates.iter().filter(|a| !a.model.starts_with("judge:")) {
                let group = (suite.clone(), a.task.clone());
                if !groups.contains(&group) {
                    groups.push(group.clone());
                }
                // Without the suite's word, the first metric the task reports.
                match configured(&a.task) {
                    Some(m) => {
                        primary.entry(group.clone()).or_insert_with(|| (m.clone(), d.run.id.clone()));
                    }
                    None if a.category.is_empty() => {
                        primary.entry(group.clone()).or_insert_with(|| (a.metric.clone(), d.run.id.clone()));
                    }
                    None => {}
                }
                let key = (suite.clone(), a.task.clone(), a.metric.clone(), a.category.clone());
                if !columns.iter().any(|c| (&c.suite, &c.task, &c.metric, &c.category) == (&key.0, &key.1, &key.2, &key.3)) {
                    let task_label = if shared(&a.task) { format!("{suite}/{}", a.task) } else { a.task.clone() };
                    let mut label = format!("{task_label} · {}", a.metric);
                    if !a.category.is_empty() {
                        label.push_str(&format!(" / {}", a.category));
                    }
                    columns.push(Column {
                        suite: suite.clone(),
                        task: a.task.clone(),
                        metric: a.metric.clone(),
                        category: a.category.clone(),
                        label,
                        primary: false,
                        range: metric_range(&a.metric, d.pairwise.contains(&(a.task.clone(), a.metric.clone()))),
                        higher_is_better: !crate::gate::lower_is_better(&a.metric),
                    });
                }
                let row = row_of(&mut rows, &a.model);
                let (ci_low, ci_high) = (a.ci95.map(|c| c.0), a.ci95.map(|c| c.1));
                cells.push((row, key, Cell { value: a.value, ci_low, ci_high, n: a.n, errors: a.errors, run_id: d.run.id.clone() }));
            }
            // Models evaluated on a task without any value there still get a row and the column.
            for (model, task) in &d.evaluated {
                row_of(&mut rows, model);
                let group = (suite.clone(), task.clone());
                if let Some(m) = configured(task) {
                    if !groups.contains(&group) {
                        groups.push(group.clone());
                    }
                    primary.entry(group).or_insert_with(|| (m.clone(), d.run.id.clone()));
                }
            }
        }
        // A primary metric without any value (a judge that never gave a parsable verdict) still
        // gets its column: empty, and counted, so no overall hides that.
        for g in &groups {
            let Some((metric, run_id)) = primary.get(g) else { continue };
            if !columns.iter().any(|c| c.suite == g.0 && c.task == g.1 && &c.metric == metric && c.category.is_empty()) {
                let pairwise = data.iter().any(|d| &d.run.id == run_id && d.pairwise.contains(&(g.1.clone(), metric.clone())));
                let task_label = if shared(&g.1) { format!("{}/{}", g.0, g.1) } else { g.1.clone() };
                columns.push(Column {
                    suite: g.0.clone(),
                    task: g.1.clone(),
                    metric: metric.clone(),
                    category: String::new(),
                    label: format!("{task_label} · {metric}"),
                    primary: false,
                    range: metric_range(metric, pairwise),
                    higher_is_better: !crate::gate::lower_is_better(metric),
                });
            }
        }
        for c in &mut columns {
            c.primary = c.category.is_empty() && primary.get(&(c.suite.clone(), c.task.clone())).is_some_and(|p| p.0 == c.metric);
        }
        let group_of = |c: &Column| groups.iter().position(|g| g.0 == c.suite && g.1 == c.task).unwrap_or(usize::MAX);
        columns.sort_by_key(|c| (group_of(c), !c.category.is_empty(), !c.primary));
        for r in &mut rows {
            r.cells = vec![None; columns.len()];
        }
        for (row, key, cell) in cells {
            if let Some(i) = columns.iter().position(|c| (&c.suite, &c.task, &c.metric, &c.category) == (&key.0, &key.1, &key.2, &key.3)) {
                rows[row].cells[i] = Some(cell);
            }
        }
        // A model evaluated on a task with no value on its primary metric: an empty cell (n = 0),
        // not a missing one.
        for d in data {
            let split = runs_of_suite[d.run.suite.as_str()] > 1;
            for (model, task) in &d.evaluated {
                let run_id = split.then(|| d.run.id.clone());
                let (Some(r), Some(c)) = (rows.iter().position(|r| &r.model == model && r.run_id == run_id), columns.iter().position(|c| c.suite == d.run.suite && &c.task == task && c.primary)) else { continue };
                rows[r].cells[c].get_or_insert_with(|| Cell { value: None, ci_low: None, ci_high: None, n: 0, errors: 0, run_id: d.run.id.clone() });
            }
        }
        let overall_columns: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].primary && columns[i].range.is_some()).collect();
        for r in &mut rows {
            let scaled: Option<Vec<f64>> = overall_columns.iter().map(|&i| r.cells[i].as_ref().and_then(|c| c.value).and_then(|v| columns[i].normalize(v))).collect();
            r.overall = scaled.filter(|s| !s.is_empty()).map(|s| s.iter().sum::<f64>() / s.len() as f64);
            r.arena = arena.and_then(|a| a.ratings.iter().find(|x| x.model == r.model)).cloned();
        }
        let mut lb = Leaderboard { columns, rows, overall_columns };
        lb.sort(SortKey::Model, false);
        lb.sort(SortKey::Arena, true);
        lb.sort(SortKey::Overall, true);
        lb
    }

    /// Sorts the rows (stable) by `key`, highest first when `descending`; rows without a value
    /// go last either way.
    pub fn sort(&mut self, key: SortKey, descending: bool) {
        let value = |r: &Row| -> Option<f64> {
            match key {
                SortKey::Model => None,
                SortKey::Overall => r.overall,
                SortKey::Arena => r.arena.as_ref().map(|a| a.rating),
                SortKey::Column(i) => r.cells.get(i).and_then(|c| c.as_ref()).and_then(|c| c.value),
            }
        };
        self.rows.sort_by(|a, b| {
            if key == SortKey::Model {
                let o = a.label.cmp(&b.label);
                return if descending { o.reverse() } else { o };
            }
            match (value(a), value(b)) {
                (Some(x), Some(y)) => {
                    let o = x.total_cmp(&y);
                    if descending { o.reverse() } else { o }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }

    /// A radar per row over capabilities: every task whose primary metric has a fixed range
    /// contributes its categories (or, without categories, the whole task) as axes, each scaled
    /// to 0–1. `None` for a missing value.
    pub fn radar(&self) -> Radar {
        let mut axes = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            if !c.primary || c.range.is_none() {
                continue;
            }
            let cats: Vec<usize> = (0..self.columns.len())
                .filter(|&j| {
                    let d = &self.columns[j];
                    d.suite == c.suite && d.task == c.task && d.metric == c.metric && !d.category.is_empty()
                })
                .collect();
            // `suite/task` when another suite has a task of that name, as the column labels
            let task = if self.columns.iter().any(|d| d.task == c.task && d.suite != c.suite) { format!("{}/{}", c.suite, c.task) } else { c.task.clone() };
            if cats.is_empty() {
                axes.push(RadarAxis { column: i, label: task });
            } else {
                axes.extend(cats.into_iter().map(|j| RadarAxis { column: j, label: format!("{task} / {}", self.columns[j].category) }));
            }
        }
        let series = self
            .rows
            .iter()
            .map(|r| axes.iter().map(|a| r.cells[a.column].as_ref().and_then(|c| c.value).and_then(|v| self.columns[a.column].normalize(v))).collect())
            .collect();
        Radar { axes, series }
    }
}

/// One radar axis: a leaderboard column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RadarAxis {
    pub column: usize,
    pub label: String,
}

/// Radar axes and, per leaderboard row, the scaled value on each axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Radar {
    pub axes: Vec<RadarAxis>,
    pub series: Vec<Vec<Option<f64>>>,
}

/// Observed and predicted win rate of `model` over `opponent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    pub model: String,
    pub opponent: String,
    /// Share of battles won (ties half).
    pub observed: f64,
    pub battles: usize,
    /// From the two ratings.
    pub predicted: f64,
}

/// Arena ratings from the battles judged in the chosen runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arena {
    pub method: &'static str,
    pub battles: usize,
    pub bootstrap: usize,
    pub seed: u64,
    /// Highest rating first.
    pub ratings: Vec<ArenaRating>,
    pub win_rates: Vec<WinRate>,
    /// Model judge vs people, where both judged the same pairs.
    pub human: Option<HumanAgreement>,
    /// What the ratings cannot say (groups that never met, unbounded ratings).
    pub notes: Vec<String>,
}

impl Arena {
    /// Bradley-Terry ratings (`bootstrap` seeded resamples) of the pairs judged in `run_ids`;
    /// `None` when they hold no battle.
    pub fn from_pairs(pairs: &[JudgedPair], run_ids: &[&str], bootstrap: usize, seed: u64) -> Result<Option<Arena>> {
        let mine: Vec<JudgedPair> = pairs.iter().filter(|p| run_ids.contains(&p.run_id.as_str())).cloned().collect();
        let battles = arena::battles_from_pairs(&mine);
        if battles.is_empty() {
            return Ok(None);
        }
        let r = arena::rate(&battles, arena::Method::Bt, 4.0, bootstrap, seed, None)?;
        let count = |m: &str| battles.iter().filter(|b| b.model_a == m || b.model_b == m).count();
        let mut ratings: Vec<ArenaRating> = r
            .ratings
            .iter()
            .map(|(m, &rating)| {
                let ci = r.ci95.get(m).copied();
                ArenaRating { model: m.clone(), rating, ci_low: ci.map(|c| c.0), ci_high: ci.map(|c| c.1), rank: r.rank[m], battles: count(m) }
            })
            .collect();
        ratings.sort_by(|a, b| b.rating.total_cmp(&a.rating).then(a.model.cmp(&b.model)));
        let win_rates = arena::observed_win_rates(&battles)
            .into_iter()
            .map(|((a, b), (observed, n))| WinRate { predicted: arena::predicted_win_rate(r.ratings[&a], r.ratings[&b]), model: a, opponent: b, observed, battles: n })
            .collect();
        Ok(Some(Arena { method: "bradley-terry", battles: battles.len(), bootstrap, seed, ratings, win_rates, human: arena::human_agreement(&mine), notes: r.notes }))
    }
}

/// One reliability figure of a judge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// `parse-failure-rate`, `position-consistency`, `position-bias`, `tie-rate`,
    /// `human-agreement`, `human-agreement-without-ties`, `cohen-kappa`.
    pub name: String,
    pub value: Option<f64>,
    pub n: i64,
}

/// A judge's reliability on one task's judge metric, as the judge phase stored it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reliability {
    pub run_id: String,
    pub judge: String,
    pub task: String,
    pub metric: String,
    pub figures: Vec<Figure>,
    /// Judge calls that failed after all retries.
    pub errors: i64,
}

/// The reliability figures stored with the judged tasks of `data` (results of model `judge:NAME`).
pub fn reliability(data: &[RunData]) -> Vec<Reliability> {
    let mut out: Vec<Reliability> = Vec::new();
    for d in data {
        for a in d.aggregates.iter().filter(|a| a.category.is_empty()) {
            let Some(judge) = a.model.strip_prefix("judge:") else { continue };
            let Some((metric, figure)) = a.metric.rsplit_once(':') else { continue };
            let f = Figure { name: figure.to_string(), value: a.value, n: a.n };
            match out.iter_mut().find(|r| r.run_id == d.run.id && r.judge == judge && r.task == a.task && r.metric == metric) {
                Some(r) => r.figures.push(f),
                None => out.push(Reliability { run_id: d.run.id.clone(), judge: judge.to_string(), task: a.task.clone(), metric: metric.to_string(), figures: vec![f], errors: a.errors }),
            }
        }
    }
    out
}

/// Whether a sample was right, for the drill-down's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Correct,
    Incorrect,
    /// The item failed after all retries.
    Error,
    /// The task has no right-or-wrong metric (exact-match, contains, acc, acc-norm).
    Ungraded,
}

/// A judge's verdict on a sample, from the sample's side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgmentView {
    pub metric: String,
    pub judge: String,
    /// The other model of a pairwise comparison; empty for a rating.
    pub opponent: String,
    /// Which slot this sample's answer had: `A` or `B` (a rating: `A`).
    pub slot: &'static str,
    /// `A`, `B`, `tie`, a rating, or `unparsed`; `None` when the call failed.
    pub verdict: Option<String>,
    pub raw: Option<String>,
    pub error: Option<String>,
}

/// One sample as the drill-down shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleView {
    pub run_id: String,
    pub model: String,
    pub task: String,
    pub item_id: String,
    pub category: Option<String>,
    pub prompt: String,
    pub response: Option<String>,
    pub answer: Option<String>,
    pub target: Option<String>,
    /// Per-sample scores in the task's metric order.
    pub scores: Vec<(String, f64)>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub judgments: Vec<JudgmentView>,
}

/// The samples of `data`'s runs with their judges' verdicts, in run, model, task, item order.
pub fn samples(store: &Store, data: &[RunData]) -> Result<Vec<SampleView>> {
    let mut out = Vec::new();
    for d in data {
        // The task's metrics in the order it reports them.
        let mut order: HashMap<&str, Vec<&str>> = HashMap::new();
        for a in &d.aggregates {
            let o = order.entry(a.task.as_str()).or_default();
            if !o.contains(&a.metric.as_str()) {
                o.push(a.metric.as_str());
            }
        }
        let mut judged: HashMap<(String, i64), Vec<crate::store::Judgment>> = HashMap::new();
        for j in store.judgments(&d.run.id, "", "")? {
            judged.entry((j.task.clone(), j.item)).or_default().push(j);
        }
        for s in store.samples(&d.run.id)? {
            let metrics = order.get(s.task.as_str()).cloned().unwrap_or_default();
            let mut scores: Vec<(String, f64)> = s.scores.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect();
            scores.sort_by_key(|(k, _)| metrics.iter().position(|m| m == k).unwrap_or(usize::MAX));
            let outcome = if s.error.is_some() {
                Outcome::Error
            } else {
                match metrics.iter().find(|m| RIGHT_OR_WRONG.contains(m)).and_then(|m| scores.iter().find(|(k, _)| k == m)) {
                    Some((_, v)) if *v >= 1.0 => Outcome::Correct,
                    Some(_) => Outcome::Incorrect,
                    None => Outcome::Ungraded,
                }
            };
            let judgments = judged
                .get(&(s.task.clone(), s.item))
                .map(|js| {
                    js.iter()
                        .filter_map(|j| {
                            let (opponent, slot) = if j.model == s.model {
                                (j.opponent.clone(), if j.order == 1 { "A" } else { "B" })
                            } else if j.opponent == s.model {
                                (j.model.clone(), if j.order == 1 { "B" } else { "A" })
                            } else {
                                return None;
                            };
                            Some(JudgmentView { metric: j.metric.clone(), judge: j.judge_model.clone(), opponent, slot, verdict: j.verdict.clone(), raw: j.raw.clone(), error: j.error.clone() })
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(SampleView {
                run_id: s.run_id,
                model: s.model,
                task: s.task,
                item_id: s.item_id,
                category: s.category,
                prompt: s.prompt,
                response: s.response,
                answer: s.answer,
                target: s.target,
                scores,
                outcome,
                error: s.error,
                judgments,
            });
        }
    }
    Ok(out)
}

/// The drill-down's filters; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct SampleFilter {
    pub model: Option<String>,
    pub task: Option<String>,
    pub outcome: Option<Outcome>,
    /// Case-insensitive text in the item id, prompt, response, answer or target.
    pub search: String,
}

impl SampleFilter {
    pub fn matches(&self, s: &SampleView) -> bool {
        let needle = self.search.to_lowercase();
        self.model.as_ref().is_none_or(|m| *m == s.model)
            && self.task.as_ref().is_none_or(|t| *t == s.task)
            && self.outcome.is_none_or(|o| o == s.outcome)
            && (needle.is_empty()
                || [Some(&s.item_id), Some(&s.prompt), s.response.as_ref(), s.answer.as_ref(), s.target.as_ref()].into_iter().flatten().any(|t| t.to_lowercase().contains(&needle)))
    }
}

/// Everything a results view shows of the chosen runs.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Not serialized: the runs' stored configs hold endpoints that a shared view has no use for.
    #[serde(skip_serializing)]
    pub runs: Vec<Run>,
    pub leaderboard: Leaderboard,
    pub radar: Radar,
    pub arena: Option<Arena>,
    pub reliability: Vec<Reliability>,
}

/// Bootstrap resamples and seed of the arena intervals.
pub const ARENA_BOOTSTRAP: usize = 1000;
pub const ARENA_SEED: u64 = 1234;

impl Results {
    /// Reads the results of `runs` from the store.
    pub fn load(store: &Store, runs: &[Run]) -> Result<(Results, Vec<RunData>)> {
        let data = load(store, runs)?;
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        let arena = Arena::from_pairs(&store.judged_pairs()?, &ids, ARENA_BOOTSTRAP, ARENA_SEED)?;
        let leaderboard = Leaderboard::build(&data, arena.as_ref());
        let radar = leaderboard.radar();
        Ok((Results { runs: runs.to_vec(), leaderboard, radar, arena, reliability: reliability(&data) }, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, suite: &str) -> Run {
        Run::fixture(id, suite)
    }

    fn agg(model: &str, task: &str, category: &str, metric: &str, value: Option<f64>) -> Aggregate {
        Aggregate { model: model.into(), task: task.into(), category: category.into(), metric: metric.into(), value, stderr: None, ci95: value.map(|v| (v - 0.1, v + 0.1)), n: 10, errors: 0 }
    }

    fn data(id: &str, suite: &str, aggregates: Vec<Aggregate>, pairwise: &[(&str, &str)]) -> RunData {
        RunData { run: run(id, suite), aggregates, pairwise: pairwise.iter().map(|(t, m)| (t.to_string(), m.to_string())).collect(), primary: HashMap::new(), evaluated: vec![] }
    }

    #[test]
    fn primary_metrics_come_from_the_stored_suite() {
        let config = serde_json::json!({"tasks": [
            {"name": "open", "kind": "generate", "metrics": [{"judge": "single", "model": "j", "max-tokens": 48}, "distinct-1"]},
            {"name": "pairs", "kind": "generate", "metrics": [{"judge": "pairwise", "model": "j", "baseline": "b"}]},
            {"name": "mc", "kind": "multiple-choice", "metrics": []},
            {"name": "ppl", "kind": "perplexity"},
            {"name": "copy", "kind": "generate", "metrics": ["bleu", "chrf"]},
        ]});
        let p = primary_metrics(&config);
        assert_eq!(p["open"], "judge-single");
        assert_eq!(p["pairs"], "judge-pairwise-vs-b");
        assert_eq!(p["mc"], "acc");
        assert_eq!(p["ppl"], "word-perplexity");
        assert_eq!(p["copy"], "bleu");
    }

    #[test]
    fn a_primary_metric_without_values_is_an_empty_counted_column() {
        // The judge never gave a parsable verdict: no judge-single aggregate, only distinct-1.
        let mut d = data("r1", "s", vec![agg("x", "open", "", "distinct-1", Some(0.4)), agg("x", "arith", "", "exact-match", Some(0.5)), agg("x", "open/turn-2", "", "distinct-1", Some(0.3))], &[]);
        d.primary = [("open".to_string(), "judge-single".to_string()), ("arith".to_string(), "exact-match".to_string())].into_iter().collect();
        let lb = Leaderboard::build(&[d], None);
        let labels: Vec<&str> = lb.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["open · judge-single", "open · distinct-1", "arith · exact-match", "open/turn-2 · judge-single", "open/turn-2 · distinct-1"]);
        assert_eq!(lb.overall_columns, [0, 2, 3]);
        assert!(lb.rows[0].cells[0].is_none());
        assert_eq!(lb.rows[0].overall, None, "not the mean of whatever else the task reported");
    }

    #[test]
    fn a_model_with_samples_but_no_values_has_a_row() {
        // An arena whose judge never gave a parsable verdict: samples, no aggregates of the models.
        let mut d = data("r1", "arena:a", vec![agg("judge:j", "open", "", "judge-pairwise-all-pairs:parse-failure-rate", Some(1.0))], &[]);
        d.primary = [("open".to_string(), "judge-pairwise-all-pairs".to_string())].into_iter().collect();
        d.evaluated = vec![("x".into(), "open".into()), ("y".into(), "open".into())];
        let lb = Leaderboard::build(&[d.clone()], None);
        assert_eq!(lb.columns.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(), ["open · judge-pairwise-all-pairs"]);
        // With another suite's task of the same name, both are told apart by suite.
        let other = data("r2", "s", vec![agg("x", "open", "", "acc", Some(0.5))], &[]);
        let both = Leaderboard::build(&[d, other], None);
        assert_eq!(both.columns.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(), ["arena:a/open · judge-pairwise-all-pairs", "s/open · acc"]);
        assert_eq!(both.radar().axes.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(), ["arena:a/open", "s/open"], "radar axes too");
        assert_eq!(lb.radar().axes.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(), ["open"]);
        assert_eq!(lb.rows.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        let empty = Cell { value: None, ci_low: None, ci_high: None, n: 0, errors: 0, run_id: "r1".into() };
        assert!(lb.rows.iter().all(|r| r.cells == vec![Some(empty.clone())] && r.overall.is_none()), "{:?}", lb.rows);
    }

    #[test]
    fn ranges() {
        assert_eq!(metric_range("exact-match", false), Some((0.0, 1.0)));
        assert_eq!(metric_range("rougeL-stem", false), Some((0.0, 1.0)));
        assert_eq!(metric_range("chrf++", false), Some((0.0, 100.0)));
        assert_eq!(metric_range("chatglm-bleu-4", false), Some((0.0, 100.0)));
        assert_eq!(metric_range("judge-single", false), Some((1.0, 10.0)));
        assert_eq!(metric_range("judge-pairwise", true), Some((0.0, 1.0)));
        assert_eq!(metric_range("word-perplexity", false), None);
        assert_eq!(metric_range("loglikelihood", false), None);
    }

    #[test]
    fn overall_scales_primary_metrics_and_needs_every_counted_task() {
        let d = data(
            "r1",
            "s",
            vec![
                // x: exact-match 0.8 (then a secondary metric that does not count), BLEU 40 → 0.4,
                // a 1–10 judge rating 7 → 6/9, a perplexity (no range: not counted).
                agg("x", "arith", "", "exact-match", Some(0.8)),
                agg("x", "arith", "", "f1", Some(0.1)),
                agg("x", "arith", "easy", "exact-match", Some(0.9)),
                agg("x", "arith", "hard", "exact-match", Some(0.7)),
                agg("x", "copy", "", "bleu", Some(40.0)),
                agg("x", "open", "", "judge-single", Some(7.0)),
                agg("x", "wiki", "", "word-perplexity", Some(30.0)),
                // y lacks the judged task: no overall.
                agg("y", "arith", "", "exact-match", Some(0.5)),
                agg("y", "copy", "", "bleu", Some(10.0)),
                agg("y", "wiki", "", "word-perplexity", Some(20.0)),
                agg("judge:j", "open", "", "judge-single:parse-failure-rate", Some(0.1)),
            ],
            &[],
        );
        let lb = Leaderboard::build(&[d], None);
        let labels: Vec<&str> = lb.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["arith · exact-match", "arith · f1", "arith · exact-match / easy", "arith · exact-match / hard", "copy · bleu", "open · judge-single", "wiki · word-perplexity"]);
        assert_eq!(lb.overall_columns, [0, 4, 5]);
        assert_eq!(lb.rows.len(), 2, "judge:j is not a model");
        assert_eq!(lb.rows[0].model, "x", "rows with an overall first");
        let want = (0.8 + 0.4 + 6.0 / 9.0) / 3.0;
        assert!((lb.rows[0].overall.unwrap() - want).abs() < 1e-12);
        assert_eq!(lb.rows[1].overall, None);
        assert!(lb.rows[1].cells[5].is_none());
        assert!(!lb.columns[6].higher_is_better);
        // Radar: arith's categories, copy and open; the perplexity task has no range.
        let radar = lb.radar();
        let axes: Vec<&str> = radar.axes.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(axes, ["arith / easy", "arith / hard", "copy", "open"]);
        assert_eq!(radar.series[1], vec![None, None, Some(0.1), None]);
    }

    #[test]
    fn pairwise_judges_are_win_rates() {
        let d = data("r1", "s", vec![agg("x", "t", "", "judge-pairwise", Some(0.75)), agg("x", "u", "", "judge-single", Some(1.0))], &[("t", "judge-pairwise")]);
        let lb = Leaderboard::build(&[d], None);
        assert_eq!(lb.columns[0].range, Some((0.0, 1.0)));
        assert_eq!(lb.columns[1].range, Some((1.0, 10.0)));
        assert!((lb.rows[0].overall.unwrap() - 0.75 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn two_runs_of_a_suite_split_rows_and_suites_share_rows() {
        let a = data("r1", "s", vec![agg("x", "t", "", "acc", Some(0.5))], &[]);
        let b = data("r2", "s", vec![agg("x", "t", "", "acc", Some(0.6))], &[]);
        let lb = Leaderboard::build(&[a.clone(), b], None);
        let labels: Vec<&str> = lb.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["x @ r2", "x @ r1"]);
        assert_eq!(lb.columns.len(), 1);
        // Another suite with the same task name: one row, two columns told apart by suite.
        let c = data("r3", "other", vec![agg("x", "t", "", "acc", Some(0.7))], &[]);
        let lb = Leaderboard::build(&[a, c], None);
        assert_eq!(lb.rows.len(), 1);
        let labels: Vec<&str> = lb.columns.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["s/t · acc", "other/t · acc"]);
        assert!((lb.rows[0].overall.unwrap() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn sorting_keeps_missing_values_last() {
        let d = data("r1", "s", vec![agg("a", "t", "", "acc", Some(0.2)), agg("b", "t", "", "acc", None), agg("c", "t", "", "acc", Some(0.9))], &[]);
        let mut lb = Leaderboard::build(&[d], None);
        let order = |lb: &Leaderboard| lb.rows.iter().map(|r| r.model.clone()).collect::<Vec<_>>();
        assert_eq!(order(&lb), ["c", "a", "b"]);
        lb.sort(SortKey::Column(0), false);
        assert_eq!(order(&lb), ["a", "c", "b"]);
        lb.sort(SortKey::Model, true);
        assert_eq!(order(&lb), ["c", "b", "a"]);
    }

    #[test]
    fn reliability_groups_a_judges_figures() {
        let mut pf = agg("judge:gpt", "t", "", "judge-pairwise-vs-b:parse-failure-rate", Some(0.1));
        pf.errors = 2;
        let d = data("r1", "s", vec![agg("x", "t", "", "judge-pairwise-vs-b", Some(0.6)), pf, agg("judge:gpt", "t", "", "judge-pairwise-vs-b:position-consistency", Some(0.9))], &[]);
        let r = reliability(&[d]);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].judge.as_str(), r[0].metric.as_str(), r[0].errors), ("gpt", "judge-pairwise-vs-b", 2));
        let names: Vec<&str> = r[0].figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["parse-failure-rate", "position-consistency"]);
    }

    #[test]
    fn arena_from_the_chosen_runs_only() {
        let p = |run: &str, a: &str, b: &str, o1: &str, o2: &str| JudgedPair {
            run_id: run.into(),
            model: a.into(),
            opponent: b.into(),
            order1: Some(o1.into()),
            order2: Some(o2.into()),
            task: "t".into(),
            item: 0,
            judge: "j".into(),
        };
        // r1: x beats y three times, loses once (one inconsistent pair is a tie); r2 is not chosen.
        let pairs = vec![p("r1", "x", "y", "A", "B"), p("r1", "x", "y", "A", "B"), p("r1", "y", "x", "B", "A"), p("r1", "x", "y", "B", "A"), p("r1", "x", "y", "A", "A"), p("r2", "y", "x", "A", "B")];
        let a = Arena::from_pairs(&pairs, &["r1"], 50, 1).unwrap().unwrap();
        assert_eq!(a.battles, 5);
        assert_eq!(a.ratings[0].model, "x");
        let w = a.win_rates.iter().find(|w| w.model == "x").unwrap();
        assert!((w.observed - 3.5 / 5.0).abs() < 1e-12);
        assert!(Arena::from_pairs(&pairs, &["r3"], 50, 1).unwrap().is_none());
    }

    #[test]
    fn sample_filters() {
        let s = SampleView {
            run_id: "r".into(),
            model: "x".into(),
            task: "t".into(),
            item_id: "q1".into(),
            category: None,
            prompt: "What is 2+2?".into(),
            response: Some("It is Four".into()),
            answer: Some("4".into()),
            target: Some("4".into()),
            scores: vec![("exact-match".into(), 1.0)],
            outcome: Outcome::Correct,
            error: None,
            judgments: vec![],
        };
        assert!(SampleFilter::default().matches(&s));
        assert!(SampleFilter { search: "four".into(), ..Default::default() }.matches(&s));
        assert!(!SampleFilter { search: "five".into(), ..Default::default() }.matches(&s));
        assert!(!SampleFilter { outcome: Some(Outcome::Incorrect), ..Default::default() }.matches(&s));
        assert!(SampleFilter { model: Some("x".into()), task: Some("t".into()), outcome: Some(Outcome::Correct), search: "Q1".into() }.matches(&s));
        assert!(!SampleFilter { model: Some("y".into()), ..Default::default() }.matches(&s));
    }
}
