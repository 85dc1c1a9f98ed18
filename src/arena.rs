//! ⑦ Arena ratings from pairwise battles, as FastChat computes them: online Elo in battle order,
//! and the maximum-likelihood Bradley-Terry model (ties half a win each way, no regularisation,
//! θ summing to zero), with seeded bootstrap intervals and FastChat's ranks.
//!
//! Pure functions over battles; battles come from a FastChat-style log file or from the judged
//! pairs in the store.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// One battle's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    A,
    B,
    Tie,
    /// FastChat's "tie (bothbad)": a tie in the ratings.
    TieBothBad,
}

impl Winner {
    pub fn parse(s: &str) -> Option<Winner> {
        match s {
            "model_a" => Some(Winner::A),
            "model_b" => Some(Winner::B),
            "tie" => Some(Winner::Tie),
            "tie (bothbad)" => Some(Winner::TieBothBad),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Winner::A => "model_a",
            Winner::B => "model_b",
            Winner::Tie => "tie",
            Winner::TieBothBad => "tie (bothbad)",
        }
    }
    /// Score of model A: 1, 0 or ½.
    fn score_a(self) -> f64 {
        match self {
            Winner::A => 1.0,
            Winner::B => 0.0,
            _ => 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Battle {
    pub model_a: String,
    pub model_b: String,
    pub winner: Winner,
}

/// Reads FastChat battle logs: a JSON array, or JSON lines, of objects with `model_a`, `model_b`
/// and `winner` (other fields are ignored).
pub fn read_battles(path: &std::path::Path) -> Result<Vec<Battle>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), cause: source })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let (values, lines): (Vec<serde_json::Value>, Vec<usize>) = if text.trim_start().starts_with('[') {
        let arr = crate::dataset::parse_strict(text).map_err(|e| Error::data(format!("{}:{}", path.display(), e.line()), format!("invalid JSON: {}", crate::dataset::json_problem(&e))))?;
        let serde_json::Value::Array(arr) = arr else {
            return Err(Error::data(path.display().to_string(), "expected a JSON array of battles (or one battle object per line)"));
        };
        let lines = crate::dataset::element_lines(text);
        (arr, lines)
    } else {
        let mut v = Vec::new();
        let mut l = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            v.push(crate::dataset::parse_strict(line).map_err(|e| Error::data(format!("{}:{}", path.display(), i + 1), format!("invalid JSON: {}", crate::dataset::json_problem(&e))))?);
            l.push(i + 1);
        }
        (v, l)
    };
    let mut out = Vec::with_capacity(values.len());
    for (v, line) in values.iter().zip(lines) {
        let at = || format!("{}:{line}", path.display());
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).ok_or_else(|| Error::data(at(), format!("battle has no string field `{k}`")));
        let (a, b, w) = (field("model_a")?, field("model_b")?, field("winner")?);
        let winner = Winner::parse(w).ok_or_else(|| Error::data(at(), format!("unknown winner {w:?}; expected model_a, model_b, tie or \"tie (bothbad)\"")))?;
        out.push(Battle { model_a: a.to_string(), model_b: b.to_string(), winner });
    }
    Ok(out)
}

/// FastChat's `compute_elo`: K = 4, base 10, scale 400, initial 1000, battles in order.
pub fn elo(battles: &[Battle], k: f64) -> BTreeMap<String, f64> {
    let ix = Indexed::new(battles);
    let r = ix.rate(&mut (0..battles.len()), Method::Elo, k);
    ix.names.into_iter().zip(r).filter_map(|(n, v)| v.map(|v| (n, v))).collect()
}

/// Battles as model indices and A's score, for fast resampling.
struct Indexed {
    names: Vec<String>,
    a: Vec<u32>,
    b: Vec<u32>,
    score_a: Vec<f64>,
}

impl Indexed {
    fn new(battles: &[Battle]) -> Indexed {
        let mut names: Vec<String> = battles.iter().flat_map(|b| [b.model_a.clone(), b.model_b.clone()]).collect();
        names.sort();
        names.dedup();
        let idx: BTreeMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
        Indexed {
            a: battles.iter().map(|b| idx[b.model_a.as_str()]).collect(),
            b: battles.iter().map(|b| idx[b.model_b.as_str()]).collect(),
            score_a: battles.iter().map(|b| b.winner.score_a()).collect(),
            names,
        }
    }

    /// Ratings from the battles at `picks` (indices, repeats allowed), in that order.
    fn rate(&self, picks: &mut dyn Iterator<Item = usize>, method: Method, k: f64) -> Vec<Option<f64>> {
        let p = self.names.len();
        match method {
            Method::Elo => {
                let mut r = vec![None; p];
                for i in picks {
                    let (x, y) = (self.a[i] as usize, self.b[i] as usize);
                    let ra = *r[x].get_or_insert(1000.0);
                    let rb = *r[y].get_or_insert(1000.0);
                    let ea = 1.0 / (1.0 + 10f64.powf((rb - ra) / 400.0));
                    let eb = 1.0 / (1.0 + 10f64.powf((ra - rb) / 400.0));
                    let sa = self.score_a[i];
                    // `+=` on the current values, as FastChat: a model against itself gets both
                    r[x] = r[x].map(|v| v + k * (sa - ea));
                    r[y] = r[y].map(|v| v + k * (1.0 - sa - eb));
                }
                r
            }
            Method::Bt => {
                let mut wins = vec![0f64; p * p];
                let mut games = vec![0f64; p * p];
                for i in picks {
                    let (x, y) = (self.a[i] as usize, self.b[i] as usize);
                    wins[x * p + y] += self.score_a[i];
                    games[x * p + y] += 1.0;
                }
                bt_from_counts(&wins, &games, p)
            }
        }
    }
}

/// Maximum-likelihood Bradley-Terry ratings `400·θ + 1000` with Σθ = 0 (FastChat's logistic
/// regression without penalty, started from zero), by Newton's method.
pub fn bradley_terry(battles: &[Battle]) -> BTreeMap<String, f64> {
    let ix = Indexed::new(battles);
    let r = ix.rate(&mut (0..battles.len()), Method::Bt, 0.0);
    ix.names.into_iter().zip(r).filter_map(|(n, v)| v.map(|v| (n, v))).collect()
}

/// Bradley-Terry from `wins[a·p + b]` (A's score, ties half) and `games[a·p + b]`; models with no
/// battle get `None` and take no part.
/// Each group of models that never met another group is centred on its own (Σθ = 0 within it):
/// the likelihood says nothing about how groups compare, and [`bt_notes`] says so.
fn bt_from_counts(wins: &[f64], games: &[f64], p: usize) -> Vec<Option<f64>> {
    let present: Vec<usize> = (0..p).filter(|&i| (0..p).any(|j| j != i && games[i * p + j] + games[j * p + i] > 0.0)).collect();
    let q = present.len();
    let group = components(&present, |i, j| games[i * p + j] + games[j * p + i] > 0.0);
    let groups = group.iter().max().map_or(0, |g| g + 1);
    let size: Vec<f64> = (0..groups).map(|c| group.iter().filter(|&&g| g == c).count() as f64).collect();
    let ln10 = std::f64::consts::LN_10;
    let mut beta = vec![0f64; q];
    for _ in 0..100 {
        let mut g = vec![0f64; q];
        let mut h = vec![0f64; q * q];
        for (x, &i) in present.iter().enumerate() {
            for (y, &j) in present.iter().enumerate() {
                let n = games[i * p + j];
                if n == 0.0 {
                    continue;
                }
                let s = 1.0 / (1.0 + (-ln10 * (beta[x] - beta[y])).exp());
                let r = ln10 * (wins[i * p + j] - n * s);
                g[x] += r;
                g[y] -= r;
                let w = ln10 * ln10 * n * s * (1.0 - s);
                h[x * q + x] += w;
                h[y * q + y] += w;
                h[x * q + y] -= w;
                h[y * q + x] -= w;
            }
        }
        // Solve (H + Σ_groups 1_c1_cᵀ/|c|) Δ = g: the added terms fix each group's free constant
        // without changing the step within the sum-zero subspaces.
        for x in 0..q {
            for y in 0..q {
                if group[x] == group[y] {
                    h[x * q + y] += 1.0 / size[group[x]];
                }
            }
        }
        let Some(delta) = solve(&mut h, &mut g, q) else { break };
        let mut step = 0f64;
        for x in 0..q {
            beta[x] += delta[x];
            step = step.max(delta[x].abs());
        }
        for (c, n) in size.iter().enumerate() {
            let mean = (0..q).filter(|&x| group[x] == c).map(|x| beta[x]).sum::<f64>() / n;
            (0..q).filter(|&x| group[x] == c).for_each(|x| beta[x] -= mean);
        }
        if step < 1e-12 {
            break;
        }
    }
    let mut out = vec![None; p];
    for (x, &i) in present.iter().enumerate() {
        out[i] = Some(400.0 * beta[x] + 1000.0);
    }
    out
}

/// Connected components of `nodes` under `edge` (symmetric), as a component index per node.
fn components(nodes: &[usize], edge: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut comp = vec![usize::MAX; nodes.len()];
    let mut next = 0;
    for start in 0..nodes.len() {
        if comp[start] != usize::MAX {
            continue;
        }
        comp[start] = next;
        let mut stack = vec![start];
        while let Some(x) = stack.pop() {
            for y in 0..nodes.len() {
                if comp[y] == usize::MAX && edge(nodes[x], nodes[y]) {
                    comp[y] = next;
                    stack.push(y);
                }
            }
        }
        next += 1;
    }
    comp
}

/// What the Bradley-Terry ratings of these battles cannot say: groups of models that never met
/// (each is centred on its own), and parts of a group that never lost a point to the rest of it
/// (the maximum-likelihood gap is unbounded; the value is where Newton's method stopped).
pub fn bt_notes(battles: &[Battle]) -> Vec<String> {
    Indexed::new(battles).bt_notes()
}

impl Indexed {
    /// [`bt_notes`] of these battles.
    fn bt_notes(&self) -> Vec<String> {
        let p = self.names.len();
        let mut score = vec![0f64; p * p]; // points i took from j
        let mut met = vec![false; p * p];
        for i in 0..self.a.len() {
            let (x, y) = (self.a[i] as usize, self.b[i] as usize);
            if x == y {
                continue;
            }
            score[x * p + y] += self.score_a[i];
            score[y * p + x] += 1.0 - self.score_a[i];
            met[x * p + y] = true;
            met[y * p + x] = true;
        }
        let present: Vec<usize> = (0..p).filter(|&i| (0..p).any(|j| met[i * p + j])).collect();
        let group = components(&present, |i, j| met[i * p + j]);
        let groups = group.iter().max().map_or(0, |g| g + 1);
        let mut notes = Vec::new();
        let names = |c: usize| present.iter().zip(&group).filter(|(_, g)| **g == c).map(|(&i, _)| self.names[i].as_str()).collect::<Vec<_>>().join(", ");
        if groups > 1 {
            let list: Vec<String> = (0..groups).map(|c| format!("{{{}}}", names(c))).collect();
            notes.push(format!("the battles fall into {groups} groups of models that never met ({}): Bradley-Terry ratings compare only within a group (each is centred on 1000); add battles between the groups", list.join(" ")));
        }
        // The maximum likelihood is finite only where every model of a group took a point from
        // every other by some chain: parts that never lost a point to the rest are unbounded.
        for c in 0..groups {
            let members: Vec<usize> = present.iter().zip(&group).filter(|(_, g)| **g == c).map(|(&i, _)| i).collect();
            let parts = strong_components(&members, |i, j| score[i * p + j] > 0.0);
            if parts.len() > 1 {
                let list: Vec<String> = parts.iter().map(|part| format!("{{{}}}", part.iter().map(|&i| self.names[i].as_str()).collect::<Vec<_>>().join(", "))).collect();
                notes.push(format!(
                    "no model of {} lost a point (not even a tie) to one listed after it: the maximum-likelihood Bradley-Terry gaps between these parts are unbounded, and the values shown are where Newton's method stopped; Elo (--method elo) or more battles give finite ones",
                    list.join(" ")
                ));
            }
        }
        notes
    }
}

/// Strongly connected components of `nodes` under the directed `edge`, listed so that no edge
/// leads from a later component to an earlier one (Kosaraju's algorithm).
fn strong_components(nodes: &[usize], edge: impl Fn(usize, usize) -> bool) -> Vec<Vec<usize>> {
    let n = nodes.len();
    // depth-first finishing order along the edges, without recursion
    let (mut seen, mut order) = (vec![false; n], Vec::with_capacity(n));
    for start in 0..n {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![(start, 0)];
        while let Some((x, next)) = stack.pop() {
            match (next..n).find(|&y| !seen[y] && edge(nodes[x], nodes[y])) {
                Some(y) => {
                    stack.push((x, y + 1));
                    seen[y] = true;
                    stack.push((y, 0));
                }
                None => order.push(x),
            }
        }
    }
    // against the edges, in reverse finishing order: each sweep is one component, sources first
    let mut comp = vec![usize::MAX; n];
    let mut parts = Vec::new();
    for &start in order.iter().rev() {
        if comp[start] != usize::MAX {
            continue;
        }
        comp[start] = parts.len();
        let (mut part, mut stack) = (vec![], vec![start]);
        while let Some(x) = stack.pop() {
            part.push(nodes[x]);
            for y in 0..n {
                if comp[y] == usize::MAX && edge(nodes[y], nodes[x]) {
                    comp[y] = parts.len();
                    stack.push(y);
                }
            }
        }
        part.sort_unstable();
        parts.push(part);
    }
    parts
}

/// Gaussian elimination with partial pivoting; `None` when singular.
fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Option<Vec<f64>> {
    for c in 0..n {
        let piv = (c..n).max_by(|&x, &y| a[x * n + c].abs().total_cmp(&a[y * n + c].abs()))?;
        if a[piv * n + c].abs() < 1e-300 {
            return None;
        }
        for k in 0..n {
            a.swap(c * n + k, piv * n + k);
        }
        b.swap(c, piv);
        for r in c + 1..n {
            let f = a[r * n + c] / a[c * n + c];
            for k in c..n {
                a[r * n + k] -= f * a[c * n + k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0f64; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    Some(x)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Elo,
    Bt,
}

/// Ratings with bootstrap intervals and ranks.
#[derive(Debug, Clone)]
pub struct Ratings {
    pub ratings: BTreeMap<String, f64>,
    pub ci95: BTreeMap<String, (f64, f64)>,
    pub rank: BTreeMap<String, usize>,
    /// What the numbers cannot say (see [`bt_notes`]), and bootstrap rounds left out.
    pub notes: Vec<String>,
}

/// Ratings by `method`; with `bootstrap > 0`, battles are resampled with replacement that many
/// times (seeded) for 95% percentile intervals, and ranks are FastChat's: 1 + the number of
/// models whose lower bound exceeds this model's upper bound. `anchor` shifts every rating so that
/// one model has the given value.
pub fn rate(battles: &[Battle], method: Method, k: f64, bootstrap: usize, seed: u64, anchor: Option<(&str, f64)>) -> Result<Ratings> {
    let ix = Indexed::new(battles);
    let anchor_idx = match anchor {
        Some((m, v)) => Some((ix.names.iter().position(|n| n == m).ok_or_else(|| Error::Usage(format!("--anchor {m}: no battles of model {m:?}")))?, v)),
        None => None,
    };
    // false when the anchor model is missing (a resample without it cannot be anchored)
    let shift = |r: &mut Vec<Option<f64>>| match anchor_idx {
        Some((i, v)) => match r[i] {
            Some(cur) => {
                r.iter_mut().flatten().for_each(|x| *x += v - cur);
                true
            }
            None => false,
        },
        None => true,
    };
    let mut full = ix.rate(&mut (0..battles.len()), method, k);
    shift(&mut full);
    let mut notes = if method == Method::Bt { ix.bt_notes() } else { Vec::new() };
    let selfish: std::collections::BTreeSet<&str> = battles.iter().filter(|b| b.model_a == b.model_b).map(|b| b.model_a.as_str()).collect();
    if !selfish.is_empty() {
        let n = battles.iter().filter(|b| b.model_a == b.model_b).count();
        let why = match method {
            Method::Elo => "they change no rating (FastChat's online Elo gives both updates to the one rating, and they cancel)",
            // FastChat's logistic regression would write +1 and −1 into one column: a one-sided,
            // meaningless observation
            Method::Bt => "they are left out, as a model against itself says nothing about its strength",
        };
        notes.push(format!("{n} battle(s) pit a model against itself ({}): {why}", selfish.into_iter().collect::<Vec<_>>().join(", ")));
    }
    let mut ratings: BTreeMap<String, f64> = ix.names.iter().zip(&full).filter_map(|(n, v)| v.map(|v| (n.clone(), v))).collect();
    let mut ci95 = BTreeMap::new();
    if bootstrap > 0 && !battles.is_empty() {
        // Each resample draws from its own generator, seeded by the round's draw from a master
        // generator (well-mixed 64-bit seeds: streams that do not overlap, unlike seeds a few
        // SplitMix steps apart), so the result does not depend on how rounds are spread over
        // threads.
        let n = battles.len();
        let mut master = crate::stats::SplitMix64::new(seed);
        let seeds: Vec<u64> = (0..bootstrap).map(|_| master.next_u64()).collect();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(bootstrap);
        let rounds: Vec<Option<Vec<Option<f64>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (ix, shift, seeds) = (&ix, &shift, &seeds);
                    scope.spawn(move || {
                        (t..bootstrap)
                            .step_by(threads)
                            .map(|round| {
                                let mut rng = crate::stats::SplitMix64::new(seeds[round]);
                                let mut r = ix.rate(&mut (0..n).map(|_| rng.below(n)), method, k);
                                let anchored = shift(&mut r);
                                (round, anchored.then_some(r))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(usize, Option<Vec<Option<f64>>>)> = handles.into_iter().flat_map(|h| h.join().expect("bootstrap worker panicked")).collect();
            all.sort_by_key(|x| x.0);
            all.into_iter().map(|x| x.1).collect()
        });
        let skipped = rounds.iter().filter(|r| r.is_none()).count();
        if skipped > 0 {
            notes.push(format!("{skipped} of {bootstrap} bootstrap resamples had no battle of the anchor model and were left out of the intervals"));
        }
        let rounds: Vec<Vec<Option<f64>>> = rounds.into_iter().flatten().collect();
        for (i, name) in ix.names.iter().enumerate() {
            let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[i]).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            ci95.insert(name.clone(), (crate::stats::percentile(&v, 0.025), crate::stats::percentile(&v, 0.975)));
            if method == Method::Elo {
                // online Elo depends on the battles' order, so FastChat reports the median
                ratings.insert(name.clone(), crate::stats::percentile(&v, 0.5));
            }
        }
        if method == Method::Elo {
            notes.push("each rating is the median of the bootstrap resamples' Elo ratings, as FastChat reports Elo with a bootstrap (online Elo in the battles' order depends on that order)".into());
        }
    }
    let rank = ratings
        .keys()
        .map(|m| {
            let r = match ci95.get(m) {
                Some(&(_, hi)) => 1 + ci95.iter().filter(|(o, (lo, _))| *o != m && *lo > hi).count(),
                None => 1 + ratings.iter().filter(|(o, v)| *o != m && **v > ratings[m]).count(),
            };
            (m.clone(), r)
        })
        .collect();
    Ok(Ratings { ratings, ci95, rank, notes })
}

/// Observed share of wins of row over column (ties half), and the count of battles.
pub fn observed_win_rates(battles: &[Battle]) -> BTreeMap<(String, String), (f64, usize)> {
    let mut acc: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for b in battles {
        let s = b.winner.score_a();
        let e = acc.entry((b.model_a.clone(), b.model_b.clone())).or_insert((0.0, 0));
        e.0 += s;
        e.1 += 1;
        let e = acc.entry((b.model_b.clone(), b.model_a.clone())).or_insert((0.0, 0));
        e.0 += 1.0 - s;
        e.1 += 1;
    }
    acc.into_iter().map(|(k, (w, n))| (k, (w / n as f64, n))).collect()
}

/// Predicted probability that `a` beats `b` under Elo/BT ratings.
pub fn predicted_win_rate(ra: f64, rb: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((rb - ra) / 400.0))
}

/// A stored verdict as a pairwise verdict (`A`, `B`, `tie`); anything else is not one.
fn pair_verdict(v: &Option<String>) -> Option<crate::judge::Verdict> {
    match v.as_deref() {
        Some("A") => Some(crate::judge::Verdict::A),
        Some("B") => Some(crate::judge::Verdict::B),
        Some("tie") => Some(crate::judge::Verdict::Tie),
        _ => None,
    }
}

/// Battles from the store's judged pairs: both orders combined by [`crate::judge::combine`]; a
/// tie or an inconsistent pair is a tie, a pair unparsed in either order is no battle.
pub fn battles_from_pairs(pairs: &[crate::store::JudgedPair]) -> Vec<Battle> {
    use crate::judge::PairOutcome;
    pairs
        .iter()
        .filter_map(|p| {
            let winner = match crate::judge::combine(pair_verdict(&p.order1), pair_verdict(&p.order2)) {
                PairOutcome::Win => Winner::A,
                PairOutcome::Loss => Winner::B,
                PairOutcome::Unparsed => return None,
                _ => Winner::Tie,
            };
            Some(Battle { model_a: p.model.clone(), model_b: p.opponent.clone(), winner })
        })
        .collect()
}

/// How often a model judge and people agree, on pairs both judged (FastChat's
/// `compute_agreement`, with and without ties, and Cohen's kappa).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HumanAgreement {
    pub agreement: Option<f64>,
    pub n: usize,
    pub agreement_without_ties: Option<f64>,
    pub n_without_ties: usize,
    pub cohen_kappa: Option<f64>,
}

/// Judge-vs-human agreement over the pairs that a model judge and a person (`human:NAME`) both
/// judged; `None` when there are none. Labels are the winning model or `tie`.
pub fn human_agreement(pairs: &[crate::store::JudgedPair]) -> Option<HumanAgreement> {
    use crate::judge::PairOutcome;
    let label = |p: &crate::store::JudgedPair| -> Option<String> {
        match crate::judge::combine(pair_verdict(&p.order1), pair_verdict(&p.order2)) {
            PairOutcome::Win => Some(p.model.clone()),
            PairOutcome::Loss => Some(p.opponent.clone()),
            PairOutcome::Unparsed => None,
            _ => Some("tie".into()),
        }
    };
    // (task, item, unordered pair) → label.
    let key = |p: &crate::store::JudgedPair| {
        let (a, b) = if p.model < p.opponent { (p.model.clone(), p.opponent.clone()) } else { (p.opponent.clone(), p.model.clone()) };
        (p.task.clone(), p.item, a, b)
    };
    let mut judge: BTreeMap<_, String> = BTreeMap::new();
    let mut human: BTreeMap<_, String> = BTreeMap::new();
    for p in pairs {
        if let Some(l) = label(p) {
            if p.judge.starts_with("human:") { human.insert(key(p), l) } else { judge.insert(key(p), l) };
        }
    }
    let both: Vec<(String, String)> = human.iter().filter_map(|(k, h)| judge.get(k).map(|j| (j.clone(), h.clone()))).collect();
    if both.is_empty() {
        return None;
    }
    let (agreement, n) = crate::judge::agreement(&both, true);
    let (agreement_without_ties, n_without_ties) = crate::judge::agreement(&both, false);
    Some(HumanAgreement { agreement, n, agreement_without_ties, n_without_ties, cohen_kappa: crate::judge::cohen_kappa(&both) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(a: &str, bb: &str, w: Winner) -> Battle {
        Battle { model_a: a.into(), model_b: bb.into(), winner: w }
    }

    #[test]
    fn elo_by_hand() {
        // First battle from 1000/1000: expected 0.5, A wins: +2 / -2.
        let r = elo(&[b("x", "y", Winner::A)], 4.0);
        assert_eq!(r["x"], 1002.0);
        assert_eq!(r["y"], 998.0);
        let r = elo(&[b("x", "y", Winner::TieBothBad)], 4.0);
        assert_eq!(r["x"], 1000.0);
    }

    #[test]
    fn elo_of_a_model_against_itself_is_fastchats() {
        // FastChat adds both updates to the one rating: they cancel
        let r = elo(&[b("x", "x", Winner::A), b("x", "y", Winner::A)], 4.0);
        assert_eq!(r["x"], 1002.0);
    }

    #[test]
    fn bt_groups_that_never_met_are_centred_apart_and_said() {
        let bs = [b("a", "b", Winner::A), b("b", "a", Winner::B), b("b", "a", Winner::A), b("c", "d", Winner::A), b("d", "c", Winner::A)];
        let r = bradley_terry(&bs);
        // a took 2 of 3 from b: θa − θb = log10 2
        assert!((r["a"] - (1000.0 + 200.0 * 2f64.log10())).abs() < 1e-9 && (r["b"] - (1000.0 - 200.0 * 2f64.log10())).abs() < 1e-9, "{r:?}");
        assert!((r["c"] - 1000.0).abs() < 1e-9 && (r["d"] - 1000.0).abs() < 1e-9, "{r:?}");
        let notes = bt_notes(&bs);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("2 groups") && notes[0].contains("{a, b} {c, d}"), "{notes:?}");
        // a model that never won is named
        let notes = bt_notes(&[b("a", "z", Winner::A), b("z", "b", Winner::B), b("a", "b", Winner::Tie)]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("no model of {a, b} {z} lost a point"), "{notes:?}");
    }

    /// Battles among four models of known strength, a fixed generator.
    #[test]
    fn bt_parts_that_never_lost_to_the_rest_are_said() {
        // a and b beat each other, c and d too, and c lost to a: {a, b} never lost a point to {c, d}
        let bs = [b("a", "b", Winner::A), b("b", "a", Winner::A), b("c", "d", Winner::A), b("d", "c", Winner::A), b("c", "a", Winner::B)];
        let notes = bt_notes(&bs);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("no model of {a, b} {c, d} lost a point"), "{notes:?}");
        // one tie back from c to a joins them: finite, and said nothing of
        let mut tied = bs.to_vec();
        tied.push(b("a", "c", Winner::Tie));
        assert!(bt_notes(&tied).is_empty());
        // a chain: x beat y, y beat z, and z never took a point back
        let notes = bt_notes(&[b("x", "y", Winner::A), b("y", "z", Winner::A), b("y", "x", Winner::B)]);
        assert!(notes[0].starts_with("no model of {x} {y} {z} lost a point"), "{notes:?}");
    }

    #[test]
    fn strong_components_come_sources_first() {
        // 0 → 1 ⇄ 2 → 3, and 4 alone
        let edges = [(0, 1), (1, 2), (2, 1), (2, 3)];
        let parts = strong_components(&[3, 2, 1, 0, 4], |i, j| edges.contains(&(i, j)));
        let pos = |x: usize| parts.iter().position(|p| p.contains(&x)).unwrap();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert!(pos(0) < pos(1) && pos(1) == pos(2) && pos(2) < pos(3), "{parts:?}");
    }

    #[test]
    fn elo_with_a_bootstrap_reports_the_median_as_fastchat() {
        // 300 wins of a, then 300 of b: online Elo in file order puts b far ahead; the resamples,
        // in random order, see two equal models
        let mut bs: Vec<Battle> = (0..300).map(|_| b("a", "b", Winner::A)).collect();
        bs.extend((0..300).map(|_| b("a", "b", Winner::B)));
        let online = elo(&bs, 4.0);
        assert!(online["b"] - online["a"] > 300.0, "{online:?}");
        let r = rate(&bs, Method::Elo, 4.0, 200, 1, None).unwrap();
        for m in ["a", "b"] {
            let (lo, hi) = r.ci95[m];
            assert!(lo <= r.ratings[m] && r.ratings[m] <= hi && (r.ratings[m] - 1000.0).abs() < 30.0, "{m}: {} in {lo}..{hi}", r.ratings[m]);
        }
        assert!(r.notes.iter().any(|n| n.contains("median of the bootstrap")), "{:?}", r.notes);
        assert_eq!(rate(&bs, Method::Elo, 4.0, 0, 1, None).unwrap().ratings, online, "no bootstrap: online Elo");
    }

    fn simulated(n: usize) -> Vec<Battle> {
        let mut rng = crate::stats::SplitMix64::new(77);
        let names = ["p", "q", "r", "s"];
        (0..n)
            .map(|_| {
                let (i, j) = (rng.below(4), rng.below(3));
                let j = if j >= i { j + 1 } else { j };
                let p = 1.0 / (1.0 + 10f64.powf((j as f64 - i as f64) * 0.2));
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                b(names[i], names[j], if u < p { Winner::A } else { Winner::B })
            })
            .collect()
    }

    #[test]
    fn bootstrap_resamples_are_independent_for_any_seed() {
        // Seeds a few generator steps apart once gave resamples that were near-copies of each
        // other (seed 0: one stream for all rounds), intervals several times too narrow.
        let bs = simulated(600);
        let width = |seed: u64| {
            let r = rate(&bs, Method::Bt, 4.0, 200, seed, None).unwrap();
            r.ci95.values().map(|(lo, hi)| hi - lo).sum::<f64>() / r.ci95.len() as f64
        };
        let reference = width(1234);
        for seed in [0, 1, 3] {
            let w = width(seed);
            assert!(w > 0.75 * reference && w < 1.33 * reference, "seed {seed}: mean interval width {w} vs {reference}");
        }
    }

    #[test]
    fn bootstrap_leaves_out_resamples_without_the_anchor() {
        let mut bs = simulated(400);
        bs.push(b("rare", "p", Winner::Tie));
        let r = rate(&bs, Method::Bt, 4.0, 100, 5, Some(("rare", 5000.0))).unwrap();
        assert_eq!(r.ratings["rare"], 5000.0);
        assert_eq!(r.ci95["rare"], (5000.0, 5000.0));
        for (m, (lo, hi)) in &r.ci95 {
            assert!(*lo <= r.ratings[m] && r.ratings[m] <= *hi && hi - lo < 500.0, "{m}: {lo} … {hi}");
        }
        assert!(r.notes.iter().any(|n| n.contains("bootstrap resamples had no battle of the anchor model")), "{:?}", r.notes);
    }

    #[test]
    fn bt_two_models_closed_form() {
        // 3 wins, 1 loss: p = 0.75 → θx − θy = log10(3); centred, ratings 1000 ± 200·log10(3).
        let bs = vec![b("x", "y", Winner::A), b("x", "y", Winner::A), b("y", "x", Winner::B), b("x", "y", Winner::B)];
        let r = bradley_terry(&bs);
        let d = 200.0 * 3f64.log10();
        assert!((r["x"] - (1000.0 + d)).abs() < 1e-9, "{r:?}");
        assert!((r["y"] - (1000.0 - d)).abs() < 1e-9);
    }

    #[test]
    fn ranks_from_intervals() {
        let mut bs = Vec::new();
        for i in 0..300 {
            bs.push(b("strong", "weak", if i % 10 < 8 { Winner::A } else { Winner::B }));
            bs.push(b("mid", "weak", if i % 10 < 6 { Winner::A } else { Winner::Tie }));
        }
        let r = rate(&bs, Method::Bt, 4.0, 200, 7, Some(("weak", 800.0))).unwrap();
        assert_eq!(r.ratings["weak"], 800.0);
        assert_eq!(r.rank["strong"], 1);
        assert!(r.rank["weak"] > 1);
        let again = rate(&bs, Method::Bt, 4.0, 200, 7, Some(("weak", 800.0))).unwrap();
        assert_eq!(r.ci95, again.ci95, "seeded");
    }
}

/// An arena file (`arena/*.toml`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArenaFile {
    /// Name; an interrupted arena of this name resumes.
    pub name: String,
    /// The suite whose models and generate-task prompts battle (relative to the arena file).
    pub suite: String,
    /// The models that battle (names of the suite's `[[model]]`s); default: all evaluated ones.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The judge: `{ judge = "pairwise", model = "gpt4-judge" }`, or `"human"` (answers only;
    /// people vote with `llmeval arena vote`).
    pub judge: toml::Value,
    /// Prompts sampled for each pair of models (each judged in both orders).
    #[serde(default = "default_battles")]
    pub battles_per_pair: usize,
    /// Seed of the prompt sample.
    #[serde(default)]
    pub seed: u64,
}

fn default_battles() -> usize {
    50
}

/// Runs (or resumes) an arena: samples prompts from the suite's generate tasks, lets every pair of
/// models answer them, and judges each pair in both orders; the judged pairs are the battles that
/// `arena ratings --db` reads.
pub fn run_arena(path: &std::path::Path, db: &std::path::Path, no_cache: bool) -> Result<crate::run::RunReport> {
    use crate::suite::{MetricSpec, Suite, TaskKind};
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), cause: source })?;
    let arena: ArenaFile = toml::from_str(&text).map_err(|e| {
        let (line, message) = crate::util::toml_error(&text, &e);
        Error::config(line.map_or_else(|| path.display().to_string(), |l| format!("{}:{l}", path.display())), message)
    })?;
    // `path:line` of the line setting `key`, for errors about its value
    let key_at = |key: &str| match text.lines().position(|l| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))) {
        Some(i) => format!("{}:{}", path.display(), i + 1),
        None => path.display().to_string(),
    };
    let at = || key_at("judge");
    // `judge = "human"`: collect the answers only; people vote on them with `arena vote`.
    let spec = match MetricSpec::parse(&arena.judge) {
        Ok(MetricSpec::Judge(j)) => Some(j),
        Ok(MetricSpec::Name(n)) if n == "human" => None,
        Ok(MetricSpec::Name(n)) => return Err(Error::config(at(), format!("judge = {n:?}: expected a table like {{ judge = \"pairwise\", model = \"gpt4-judge\" }}"))),
        Err(m) => return Err(Error::config(at(), format!("judge: {m}"))),
    };
    if spec.as_ref().is_some_and(|s| s.baseline.is_some()) {
        return Err(Error::config(at(), "judge: an arena compares every pair of models; leave out baseline"));
    }
    let suite_path = path.parent().unwrap_or(std::path::Path::new("")).join(&arena.suite);
    let base = Suite::load(&suite_path)?;
    let mut file = base.file.clone();
    let wanted: Vec<String> = arena.models.clone().unwrap_or_else(|| file.models.iter().filter(|m| m.evaluate).map(|m| m.name.clone()).collect());
    for (i, w) in wanted.iter().enumerate() {
        if !file.models.iter().any(|m| &m.name == w) {
            return Err(Error::config(key_at("models"), format!("model {w:?} is not a [[model]] of {}", suite_path.display())));
        }
        if wanted[..i].contains(w) {
            return Err(Error::config(key_at("models"), format!("model {w:?} is listed twice")));
        }
    }
    if let Some(spec) = &spec {
        if !file.models.iter().any(|m| m.name == spec.model) {
            return Err(Error::config(at(), format!("judge model {:?} is not a [[model]] of {}", spec.model, suite_path.display())));
        }
        let judge = crate::judge::load_judge(&spec.judge, &base.dir).map_err(|e| Error::config(at(), format!("judge: {e}")))?;
        if judge.template.kind == crate::judge::JudgeKind::Single {
            return Err(Error::config(at(), format!("judge {:?} rates one answer at a time; an arena's battles need a judge of two answers (pairwise, pairwise-reference or pandalm)", spec.judge)));
        }
    }
    if wanted.len() < 2 {
        return Err(Error::config(key_at("models"), "an arena needs at least two models"));
    }
    if arena.battles_per_pair == 0 {
        return Err(Error::config(key_at("battles-per-pair"), "battles-per-pair = 0 gives no battle; give at least 1"));
    }
    for m in &mut file.models {
        m.evaluate = wanted.contains(&m.name);
    }
    file.tasks.retain(|t| t.kind == TaskKind::Generate && t.turns.is_none());
    if file.tasks.is_empty() {
        return Err(Error::config(at(), format!("{} has no single-turn generate task to take prompts from", suite_path.display())));
    }
    let metric = match &spec {
        Some(spec) => {
            let mut judge_table = toml::Table::new();
            judge_table.insert("judge".into(), toml::Value::String(spec.judge.clone()));
            judge_table.insert("model".into(), toml::Value::String(spec.model.clone()));
            judge_table.insert("mode".into(), toml::Value::String("all-pairs".into()));
            if let Some(n) = spec.max_tokens {
                judge_table.insert("max-tokens".into(), toml::Value::Integer(i64::from(n)));
            }
            toml::Value::Table(judge_table)
        }
        None => toml::Value::String("distinct-1".into()),
    };
    // Sample the prompts (the same for every pair, so each pair gets battles-per-pair battles).
    let mut pool: Vec<(String, usize)> = Vec::new();
    for t in &file.tasks {
        let rows = crate::dataset::load(&base.resolve(t.data.get_ref()))?;
        pool.extend((0..rows.len()).map(|i| (t.name.clone(), i)));
    }
    let k = arena.battles_per_pair.min(pool.len());
    let mut rng = crate::pyrandom::PyRandom::new(arena.seed);
    let mut items: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for j in rng.sample(pool.len(), k) {
        items.entry(pool[j].0.clone()).or_default().push(pool[j].1);
    }
    for t in &mut file.tasks {
        t.metrics = vec![toml::Spanned::new(0..0, metric.clone())];
    }
    file.tasks.retain(|t| items.contains_key(&t.name));
    file.name = format!("arena:{}", arena.name);
    let suite = Suite { file, path: suite_path.clone(), dir: base.dir.clone(), text: format!("{}\n# arena\n{text}", base.text) };
    let store = crate::store::Store::open(db)?;
    // an interrupted arena resumes; one edited since starts anew (a run must see one set of inputs)
    let resume = match store.latest_unfinished(&suite.file.name)? {
        Some(run) if run.suite_hash == suite.content_hash()? => true,
        Some(run) => {
            eprintln!("arena {:?} or its suite changed since its unfinished run {}: starting a new run (that one stays in {})", arena.name, run.id, db.display());
            false
        }
        None => false,
    };
    drop(store);
    let resume_command = Some(format!("llmeval arena run {} --db {}", path.display(), db.display()));
    let opts = crate::run::RunOptions { db: db.to_path_buf(), resume, no_cache, progress: true, items: Some(items), resume_command, ..Default::default() };
    crate::run::run_suite(&suite, &opts)
}

/// The pairs of the arena's latest run that `voter` has not voted on yet, in a shuffled order with
/// shuffled sides (so position and order tell nothing).
pub fn pairs_to_vote(store: &crate::store::Store, arena_path: &std::path::Path, voter: &str) -> Result<(String, Vec<crate::tui::vote::Pair>)> {
    let text = std::fs::read_to_string(arena_path).map_err(|source| Error::Read { path: arena_path.to_path_buf(), cause: source })?;
    let arena: ArenaFile = toml::from_str(&text).map_err(|e| Error::config(arena_path.display().to_string(), e.message().trim_end().to_string()))?;
    let suite_name = format!("arena:{}", arena.name);
    let run = store.runs()?.into_iter().find(|r| r.suite == suite_name).ok_or_else(|| {
        Error::Usage(format!("no run of arena {:?} in {}; run `llmeval arena run {}` first", arena.name, store.path().display(), arena_path.display()))
    })?;
    let samples = store.samples(&run.id)?;
    let voted: std::collections::BTreeSet<(String, i64, String, String)> = store
        .judged_pairs()?
        .into_iter()
        .filter(|p| p.judge == format!("human:{voter}"))
        .flat_map(|p| [(p.task.clone(), p.item, p.model.clone(), p.opponent.clone()), (p.task, p.item, p.opponent, p.model)])
        .collect();
    let mut by_item: BTreeMap<(String, i64), Vec<&crate::store::Sample>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.error.is_none() && s.response.is_some()) {
        by_item.entry((s.task.clone(), s.item)).or_default().push(s);
    }
    let mut rng = crate::stats::SplitMix64::new(crate::util::now_unix().to_bits());
    let mut pairs = Vec::new();
    for ((task, item), ss) in &by_item {
        for i in 0..ss.len() {
            for j in i + 1..ss.len() {
                let (mut x, mut y) = (ss[i], ss[j]);
                if voted.contains(&(task.clone(), *item, x.model.clone(), y.model.clone())) {
                    continue;
                }
                if rng.below(2) == 1 {
                    std::mem::swap(&mut x, &mut y);
                }
                pairs.push(crate::tui::vote::Pair {
                    task: task.clone(),
                    item: *item,
                    prompt: x.prompt.clone(),
                    first: x.model.clone(),
                    first_answer: x.response.clone().unwrap_or_default(),
                    second: y.model.clone(),
                    second_answer: y.response.clone().unwrap_or_default(),
                });
            }
        }
    }
    for i in (1..pairs.len()).rev() {
        pairs.swap(i, rng.below(i + 1));
    }
    Ok((run.id, pairs))
}
