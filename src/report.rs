//! ⑦ The HTML report: one self-contained file — inline CSS, JavaScript and SVG, nothing fetched —
//! rendered from `reports/report.html.j2` (minijinja) with `reports/report.js`, both embedded in
//! the binary.
//!
//! Design decision: data reaches the page by two escaped paths only. The tables the template
//! renders go through minijinja's HTML auto-escaping; everything the script draws (charts, the
//! sample drill-down) travels once as a JSON island in `<script type="application/json">`, with
//! `<`, `>`, `&`, U+2028 and U+2029 written as `\uXXXX` so no string can end the element, and the
//! script builds nodes with `createElement`/`textContent`, never parsing data as HTML. A
//! Content-Security-Policy admits that one script (by its SHA-256) and no network at all, as a
//! second line of defence.

use crate::error::{Error, Result};
use crate::results::{format_value, Leaderboard, Results, SampleView};
use crate::store::{Run, Store};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

const TEMPLATE_NAME: &str = "reports/report.html.j2";
const TEMPLATE: &str = include_str!("../reports/report.html.j2");
const SCRIPT: &str = include_str!("../reports/report.js");

/// What the report shows of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunMeta {
    pub id: String,
    pub suite: String,
    pub suite_path: String,
    pub suite_hash: String,
    pub version: String,
    pub status: String,
    pub started: String,
    pub ended: Option<String>,
    /// `name (engine: served model or path)`, judge-only models marked.
    pub models: Vec<String>,
    /// `task: seed N`, `task: few-shot seed N`.
    pub seeds: Vec<String>,
    /// `--tasks`, `--models`, `--limit` of the run, as given.
    pub selection: Vec<String>,
    pub notes: Vec<String>,
}

impl RunMeta {
    fn of(run: &Run) -> RunMeta {
        let s = |v: &Value| v.as_str().map(str::to_string);
        let models = run.config["models"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let engine = s(&m["engine"]).unwrap_or_default();
                        let what = s(&m["model"]).filter(|x| !x.is_empty()).or_else(|| s(&m["path"])).unwrap_or_default();
                        let judge_only = if m["evaluate"] == Value::Bool(false) { ", not evaluated" } else { "" };
                        format!("{} ({engine}: {what}{judge_only})", s(&m["name"]).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut seeds = Vec::new();
        for t in run.config["tasks"].as_array().into_iter().flatten() {
            let name = s(&t["name"]).unwrap_or_default();
            if let Some(seed) = t["seed"].as_u64() {
                seeds.push(format!("{name}: seed {seed}"));
            }
            if let Some(seed) = t["few-shot"]["seed"].as_u64() {
                seeds.push(format!("{name}: few-shot seed {seed}"));
            }
        }
        let mut selection = Vec::new();
        for key in ["tasks", "models", "limit"] {
            match &run.selection[key] {
                Value::Null => {}
                Value::Array(a) => selection.push(format!("--{key} {}", a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))),
                v => selection.push(format!("--{key} {v}")),
            }
        }
        RunMeta {
            id: run.id.clone(),
            suite: run.suite.clone(),
            suite_path: run.suite_path.clone(),
            suite_hash: run.suite_hash.clone(),
            version: run.version.clone(),
            status: run.status.clone(),
            started: crate::util::iso8601(run.started_at),
            ended: run.ended_at.map(crate::util::iso8601),
            models,
            seeds,
            selection,
            notes: run.notes.clone(),
        }
    }
}

/// A table as the template prints it: texts only.
#[derive(Debug, Clone, Serialize)]
struct Table {
    header: Vec<String>,
    rows: Vec<TableRow>,
}

#[derive(Debug, Clone, Serialize)]
struct TableRow {
    model: String,
    label: String,
    cells: Vec<TableCell>,
}

#[derive(Debug, Clone, Serialize)]
struct TableCell {
    text: String,
    /// Tooltip.
    title: String,
    /// Sort key for the page's column sorting ("" when empty).
    sort: String,
    /// The task whose samples a click on the cell shows ("" for none).
    task: String,
}

fn cell_text(lb: &Leaderboard, row: usize, col: usize) -> TableCell {
    let c = &lb.columns[col];
    match &lb.rows[row].cells[col] {
        None => TableCell { text: "—".into(), title: "no result".into(), sort: String::new(), task: String::new() },
        Some(x) => {
            let errors = if x.errors > 0 { format!(", {} errored", x.errors) } else { String::new() };
            let title = match (x.value, x.ci_low.zip(x.ci_high)) {
                (Some(_), Some((lo, hi))) => format!("n = {}, 95% CI [{}, {}]{errors}", x.n, format_value(lo, c.range), format_value(hi, c.range)),
                (Some(_), None) => format!("n = {}{errors}", x.n),
                (None, _) => format!("no item could be scored (n = {}{errors})", x.n),
            };
            TableCell {
                text: x.text(c),
                title: format!("{title}; run {}", x.run_id),
                sort: x.value.map_or(String::new(), |v| v.to_string()),
                task: c.task.clone(),
            }
        }
    }
}

fn leaderboard_table(lb: &Leaderboard, whole_task: bool) -> Table {
    let cols: Vec<usize> = (0..lb.columns.len()).filter(|&i| lb.columns[i].category.is_empty() == whole_task).collect();
    let mut header: Vec<String> = if whole_task { vec!["overall".into(), "arena".into()] } else { vec![] };
    header.extend(cols.iter().map(|&i| lb.columns[i].label.clone()));
    let rows = (0..lb.rows.len())
        .map(|r| {
            let row = &lb.rows[r];
            let mut cells = Vec::new();
            if whole_task {
                cells.push(match row.overall {
                    Some(v) => TableCell { text: format!("{v:.3}"), title: format!("mean of {} scaled primary metrics", lb.overall_columns.len()), sort: v.to_string(), task: String::new() },
                    None => TableCell { text: "—".into(), title: "not evaluated on every counted task".into(), sort: String::new(), task: String::new() },
                });
                cells.push(match &row.arena {
                    Some(a) => TableCell {
                        text: format!("{:.0}", a.rating),
                        title: format!("rank {}, {} battles{}", a.rank, a.battles, a.ci_low.zip(a.ci_high).map_or(String::new(), |(lo, hi)| format!(", 95% CI [{lo:.0}, {hi:.0}]"))),
                        sort: a.rating.to_string(),
                        task: String::new(),
                    },
                    None => TableCell { text: "—".into(), title: "no battles".into(), sort: String::new(), task: String::new() },
                });
            }
            cells.extend(cols.iter().map(|&c| cell_text(lb, r, c)));
            TableRow { model: row.model.clone(), label: row.label.clone(), cells }
        })
        .collect();
    Table { header, rows }
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct ReportData {
    pub generated_at: String,
    pub llmeval_version: String,
    pub runs: Vec<RunMeta>,
    pub results: Results,
    pub samples: Vec<SampleView>,
}

/// Reads the report's data for `runs` from the store.
pub fn collect(store: &Store, runs: &[Run]) -> Result<ReportData> {
    let (results, data) = Results::load(store, runs)?;
    let samples = crate::results::samples(store, &data)?;
    Ok(ReportData {
        generated_at: crate::util::iso8601(crate::util::now_unix()),
        llmeval_version: env!("CARGO_PKG_VERSION").to_string(),
        runs: runs.iter().map(RunMeta::of).collect(),
        results,
        samples,
    })
}

/// JSON for a `<script type="application/json">` element: `<`, `>`, `&`, U+2028 and U+2029 as
/// `\uXXXX` escapes (they can only occur inside JSON strings, where the escape means the same), so
/// no data can close the element or open a comment.
pub fn json_island(v: &impl Serialize) -> String {
    let text = serde_json::to_string(v).expect("report data serializes");
    let mut out = String::with_capacity(text.len() + 64);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ABC[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// The page's Content-Security-Policy: no network, no script but `script`.
pub fn content_security_policy(script: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = base64(&Sha256::digest(script.as_bytes()));
    format!("default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")
}

/// The report as one HTML document.
pub fn render(data: &ReportData) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    let err = |e: minijinja::Error| Error::config(format!("{TEMPLATE_NAME}:{}", e.line().unwrap_or(0)), crate::prompt::jinja_message(&e));
    env.add_template(TEMPLATE_NAME, TEMPLATE).map_err(err)?;
    let lb = &data.results.leaderboard;
    let counted: Vec<String> = lb.overall_columns.iter().map(|&i| lb.columns[i].label.clone()).collect();
    fn v(x: impl Serialize) -> minijinja::Value {
        minijinja::Value::from(minijinja::value::Serde(x))
    }
    let ctx = minijinja::context! {
        generated_at => data.generated_at.clone(),
        llmeval_version => data.llmeval_version.clone(),
        runs => v(&data.runs),
        leaderboard => v(leaderboard_table(lb, true)),
        by_category => v(leaderboard_table(lb, false)),
        overall_counts => counted,
        reliability => v(&data.results.reliability),
        arena => v(&data.results.arena),
        samples => data.samples.len(),
        // Built from constants and a base64 hash: no data, nothing to escape.
        csp => minijinja::Value::from_safe_string(content_security_policy(SCRIPT)),
        data_json => minijinja::Value::from_safe_string(json_island(data)),
        script => minijinja::Value::from_safe_string(SCRIPT.to_string()),
    };
    env.get_template(TEMPLATE_NAME).and_then(|t| t.render(ctx)).map_err(err)
}

/// Collects, renders and writes the report of `runs` to `out`; returns the sample count.
pub fn write(store: &Store, runs: &[Run], out: &Path) -> Result<usize> {
    let data = collect(store, runs)?;
    let html = render(&data)?;
    std::fs::write(out, html).map_err(|source| Error::Write { path: out.to_path_buf(), cause: source })?;
    Ok(data.samples.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_island_cannot_end_its_element() {
        let hostile = serde_json::json!({"s": "</script><script>alert(1)</script> <!-- & \u{2028}\u{2029}"});
        let out = json_island(&hostile);
        assert!(!out.contains('<') && !out.contains('>') && !out.contains('&') && !out.contains('\u{2028}') && !out.contains('\u{2029}'), "{out}");
        assert!(out.contains("\\u003c/script\\u003e"));
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, hostile, "the escapes mean the same string");
    }

    #[test]
    fn base64_by_hand() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // SHA-256 of "" in base64, as CSP hashes are written.
        use sha2::{Digest, Sha256};
        assert_eq!(base64(&Sha256::digest(b"")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }

    #[test]
    fn the_script_never_parses_data_as_html() {
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "setTimeout(\"", "javascript:"] {
            assert!(!SCRIPT.contains(sink), "reports/report.js uses {sink}");
        }
        assert!(!TEMPLATE.contains("|safe"), "the template marks nothing safe itself");
    }

    fn run(id: &str) -> Run {
        Run {
            id: id.into(),
            suite: "s<b>".into(),
            suite_path: "s.toml".into(),
            suite_hash: "abc".into(),
            config: serde_json::json!({"models": [{"name": "<img src=x onerror=alert(1)>", "engine": "openai", "model": "m"}], "tasks": [{"name": "t", "seed": 7, "few-shot": {"seed": 1234}}]}),
            selection: serde_json::json!({"tasks": null, "models": null, "limit": 5}),
            version: "0.1.0".into(),
            started_at: 0.0,
            ended_at: Some(60.0),
            status: "complete".into(),
            notes: vec!["</textarea>".into()],
        }
    }

    #[test]
    fn template_escapes_and_allows_only_its_script() {
        use crate::store::Aggregate;
        let r = run("r1");
        let data = crate::results::RunData {
            run: r.clone(),
            aggregates: vec![Aggregate { model: "<img src=x onerror=alert(1)>".into(), task: "</td>t".into(), category: String::new(), metric: "acc".into(), value: Some(0.5), stderr: None, ci95: Some((0.4, 0.6)), n: 4, errors: 0 }],
            pairwise: Default::default(),
            primary: Default::default(),
            evaluated: vec![],
        };
        let lb = Leaderboard::build(&[data], None);
        let results = Results { runs: vec![r.clone()], radar: lb.radar(), leaderboard: lb, arena: None, reliability: vec![] };
        let report = ReportData { generated_at: "now".into(), llmeval_version: "0".into(), runs: vec![RunMeta::of(&r)], results, samples: vec![] };
        let html = render(&report).unwrap();
        assert!(!html.contains("<img"), "model names are escaped");
        assert!(!html.contains("</td>t") && !html.contains("</textarea>") && !html.contains("s<b>"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("t: seed 7") && html.contains("t: few-shot seed 1234") && html.contains("--limit 5"));
        assert_eq!(html.matches("<script").count(), 2, "the data island and the page's script");
        assert_eq!(html.matches("</script>").count(), 2);
        let csp = content_security_policy(SCRIPT);
        assert!(html.contains(&format!("content=\"{csp}\"")));
        assert!(html.contains(SCRIPT), "the hashed script is inserted byte for byte");
        for url in ["http://", "https://", "//cdn", "src=\"http"] {
            let outside: Vec<&str> = html.match_indices(url).map(|(i, _)| &html[i..(i + 40).min(html.len())]).filter(|s| !s.starts_with("http://www.w3.org/2000/svg")).collect();
            assert!(outside.is_empty(), "external reference: {outside:?}");
        }
    }
}
