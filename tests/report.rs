//! The HTML report in a real browser: a suite run against loopback models whose answers (and a
//! judge whose verdicts, and data whose categories) carry script-injection payloads, then
//! `llmeval report`, then Debian's headless Chromium with networking off. Nothing from the data
//! may execute or become markup; it must show as text; the script-drawn charts must be there.

use crate::server::FakeServer;
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Payloads that, if they ever ran or became markup, would leave a `pwned-*` element or change
/// the document's title.
const PAYLOADS: &[&str] = &[
    "<script>document.title='PWNED-1'</script>",
    "<img src=x onerror=\"document.body.appendChild(document.createElement('pwned-2'))\">",
    "</textarea><svg onload=\"document.title='PWNED-3'\"></svg>",
    "</script><script>document.body.appendChild(document.createElement('pwned-4'))</script>",
    "Tom &amp; Jerry <!-- \u{2028}\u{2029} --> <b>bold?</b>",
];

/// A data-supplied category and a suite-supplied model name, both markup.
const HOSTILE_CATEGORY: &str = "<img src=y onerror=\"document.title='PWNED-cat'\">";
const HOSTILE_MODEL: &str = "bad<i>model</i>";

/// How the DOM serializer writes a text node.
fn as_dom_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\u{a0}', "&nbsp;")
}

/// The better model: arithmetic right except when the sum is a multiple of 4, followed by a
/// payload; echoes exactly.
fn good(prompt: &str) -> String {
    if let Some(text) = prompt.strip_prefix("Repeat: ") {
        return text.to_string();
    }
    let sum = sum_of(prompt);
    format!("{} {}", if sum % 4 == 0 { sum + 2 } else { sum }, PAYLOADS[(sum as usize) % PAYLOADS.len()])
}

/// The worse model: arithmetic right only when the sum is 0, 1 or 2 modulo 7; echoes a payload of
/// its own.
fn bad(prompt: &str) -> String {
    if prompt.starts_with("Repeat: ") {
        return format!("no. {}", PAYLOADS[prompt.len() % PAYLOADS.len()]);
    }
    let sum = sum_of(prompt);
    format!("{} {}", if sum % 7 < 3 { sum } else { sum + 1 }, PAYLOADS[0])
}

/// The judge prefers the answer holding the right sum and says so with a payload around the verdict.
fn judge(prompt: &str) -> String {
    let right = sum_of(prompt).to_string();
    let between = |s: &str, e: &str| -> String {
        let i = prompt.find(s).map(|i| i + s.len()).unwrap_or(0);
        prompt[i..].split(e).next().unwrap_or("").to_string()
    };
    let has = |a: &str| a.split(|c: char| !c.is_ascii_digit()).any(|t| t == right);
    let (a, b) = (between("[Assistant A's answer]", "[End of assistant A's answer]"), between("[Assistant B's answer]", "[End of assistant B's answer]"));
    let verdict = match (has(&a), has(&b)) {
        (true, false) => "[[A]]",
        (false, true) => "[[B]]",
        _ => "[[C]]",
    };
    format!("{} {verdict}", PAYLOADS[1])
}

fn suite(good: &str, bad: &str, judge: &str) -> String {
    format!(
        r#"name = "hostile"

{}{}{}
{}
[[task]]
name = "echo"
kind = "generate"
data = "data/echo.jsonl"
prompt = "Repeat: {{{{ text }}}}"
target = "{{{{ text }}}}"
max-tokens = 64
metrics = ["exact-match", "rougeL"]
"#,
        remote_model("good", good, "g", ""),
        remote_model(HOSTILE_MODEL, bad, "b", ""),
        remote_model("judge", judge, "j", "evaluate = false"),
        arith_task(r#"category = "{{ category }}"
max-tokens = 64
extract = { regex = "(-?\\d+)" }
metrics = ["exact-match", { judge = "pairwise", model = "judge", baseline = "good" }]"#),
    )
}

/// Chromium, or a failure that says how to install it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("LLMEVAL_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("chromium"));
    match Command::new(&path).arg("--version").stdout(Stdio::piped()).stderr(Stdio::piped()).output() {
        Ok(o) if o.status.success() => path,
        Ok(o) => panic!("{} --version failed: {}", path.display(), String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!(
            "the report's browser test needs Debian's chromium ({}: {e}); install it with `apt-get install -y --no-install-recommends chromium` (as .ci/run does), or point LLMEVAL_CHROMIUM at a Chromium binary",
            path.display()
        ),
    }
}

/// Runs headless Chromium on `file` with networking off; returns stdout. Killed after 120 s.
fn headless(chromium: &Path, profile: &Path, extra: &[String], file: &Path) -> String {
    let mut child = Command::new(chromium)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-dev-shm-usage"])
        .arg("--proxy-server=127.0.0.1:9")
        .arg("--host-resolver-rules=MAP * ~NOTFOUND")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).map(|_| s)
    });
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap().expect("chromium's output is UTF-8")
}

#[test]
fn report_renders_hostile_outputs_as_text_and_draws_its_charts_in_chromium() {
    let chromium = chromium();
    let (g, b, j) = (FakeServer::start(good), FakeServer::start(bad), FakeServer::start(judge));
    let dir = TempDir::new("report");
    let categories = ["easy", "hard", HOSTILE_CATEGORY];
    let mut rows = String::new();
    for (i, line) in arith_rows(9).lines().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v["category"] = json!(categories[i % 3]);
        rows.push_str(&format!("{v}\n"));
    }
    dir.write("data/arith.jsonl", &rows);
    dir.write("data/echo.jsonl", &PAYLOADS.iter().map(|p| format!("{}\n", json!({"text": p}))).collect::<String>());
    let s = dir.write("suite.toml", &suite(&g.base_url(), &b.base_url(), &j.base_url()));
    let db = dir.db();
    let db = db.to_str().unwrap();
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", db, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = json_out(&out);
    let run_id = results["run_id"].as_str().unwrap().to_string();

    let html_path = dir.path().join("report.html");
    let out = llmeval(&["report", "--db", db, "--out", html_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&run_id) && stdout(&out).contains("28 sample(s)"), "{}", stdout(&out));
    let html = std::fs::read_to_string(&html_path).unwrap();

    // The file: a CSP that forbids the network, two script elements, no reference outside it.
    assert!(html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'sha256-"));
    assert_eq!(html.matches("<script").count(), 2);
    assert_eq!(html.matches("</script").count(), 2, "no data closes the JSON island");
    let external: Vec<&str> =
        html.match_indices("http").map(|(i, _)| &html[i..(i + 40).min(html.len())]).filter(|s| !s.starts_with("http://www.w3.org/2000/svg") && !s.starts_with("http-equiv")).collect();
    assert!(external.is_empty(), "the report refers outside itself: {external:?}");

    // Chromium, networking off: the DOM after the page's script ran.
    let profile = dir.path().join("chromium-profile");
    let dom = headless(&chromium, &profile, &["--dump-dom".into(), "--virtual-time-budget=5000".into()], &html_path);
    assert!(dom.contains("<title>llmeval report</title>"), "the title changed: {}", &dom[..dom.len().min(400)]);
    assert!(!dom.contains("<title>PWNED"));
    for marker in ["<pwned", "<img", "<svg onload", "<textarea", "<i>model</i>", "<b>bold?</b>"] {
        assert!(!dom.contains(marker), "data became markup: {marker} in the DOM");
    }
    assert_eq!(dom.matches("<script").count(), 2, "no script element from the data");
    for p in PAYLOADS.iter().chain([&HOSTILE_CATEGORY]) {
        assert!(dom.contains(&as_dom_text(p)), "payload not shown as text: {p}");
    }
    let model_text = as_dom_text(HOSTILE_MODEL);
    assert!(dom.contains(&format!("<td>{model_text}</td>")), "the model name is text in the leaderboard");

    // Charts drawn by the page's script, counted against the run's own results.
    let whole: Vec<&Value> = results["results"].as_array().unwrap().iter().filter(|r| !r["model"].as_str().unwrap().starts_with("judge:")).collect();
    let bars = whole.iter().filter(|r| !r["value"].is_null()).count();
    let charts = whole.iter().map(|r| (r["task"].as_str().unwrap(), r["metric"].as_str().unwrap())).collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!((bars, charts), (3 + 4, 4), "good: 3 results (the baseline has no pairwise score against itself); bad: 4");
    assert_eq!(dom.matches("class=\"bar\"").count(), bars);
    assert_eq!(dom.matches("class=\"bar-chart\"").count(), charts);
    assert_eq!(dom.matches("class=\"whisker\"").count(), 3 * whole.iter().filter(|r| r["ci95"].is_array()).count());
    // Radar axes: arith's three categories and echo (whole task); one radar per model.
    assert_eq!(dom.matches("class=\"radar-chart\"").count(), 2);
    assert_eq!(dom.matches("class=\"radar-area\"").count(), 2);
    assert_eq!(dom.matches("class=\"radar-point\"").count() + dom.matches("class=\"radar-missing\"").count(), 2 * 4);
    assert!(dom.contains(&format!("arith / {}", as_dom_text(HOSTILE_CATEGORY))), "the category is a radar axis, as text");
    // Arena: the pairwise judgments are battles of two models.
    assert_eq!(dom.matches("class=\"interval\"").count(), 2);
    assert_eq!(dom.matches("class=\"heat\"").count(), 2);
    // Judge reliability as stored.
    let consistency = crate::support::result(&results, "judge:judge", "arith", "judge-pairwise-vs-good:position-consistency")["value"].as_f64().unwrap();
    assert!(dom.contains(&format!("position-consistency: {consistency:.3}")), "reliability figures");
    // Every sample in the drill-down, with the judge's raw text.
    assert_eq!(dom.matches("class=\"sample\"").count(), 28);
    assert!(dom.contains("showing 28 of 28 matching (28 in all)"));
    assert!(dom.contains(&format!("{} [[A]]", as_dom_text(PAYLOADS[1]))) || dom.contains(&format!("{} [[B]]", as_dom_text(PAYLOADS[1]))), "judge raw text as text");
    // Run metadata.
    for m in [&run_id, "hostile", "suite hash", env!("CARGO_PKG_VERSION")] {
        assert!(dom.contains(m), "run metadata: {m}");
    }

    // The drill-down's filters and search, given in the address, against the stored samples.
    let shown = json_out(&llmeval(&["runs", "show", &run_id, "--db", db, "--samples", "--json"]));
    let samples = shown["samples"].as_array().unwrap();
    let correct = samples.iter().filter(|x| x["model"] == HOSTILE_MODEL && x["scores"]["exact-match"] == 1.0).count();
    let good_arith_wrong = samples.iter().filter(|x| x["model"] == "good" && x["task"] == "arith" && x["scores"]["exact-match"] == 0.0).count();
    let needle = "tom &amp; jerry";
    let found = samples.iter().filter(|x| ["item_id", "prompt", "response", "answer", "target"].iter().any(|k| x[*k].as_str().is_some_and(|t| t.to_lowercase().contains(needle)))).count();
    assert!(correct > 0 && good_arith_wrong > 0 && found > 0 && found < 28, "the filters must select something and not everything");
    let enc = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
    for (query, want) in [
        (format!("model={}&outcome=correct", enc(HOSTILE_MODEL)), correct),
        ("model=good&task=arith&outcome=incorrect".to_string(), good_arith_wrong),
        (format!("q={}", enc(needle)), found),
    ] {
        let url_file = PathBuf::from(format!("{}#samples?{query}", html_path.display()));
        let dom = headless(&chromium, &profile, &["--dump-dom".into(), "--virtual-time-budget=5000".into()], &url_file);
        assert!(dom.contains(&format!("showing {want} of {want} matching (28 in all)")), "#samples?{query}: want {want}");
        assert_eq!(dom.matches("class=\"sample\"").count(), want, "#samples?{query}");
    }

    // A screenshot renders (a page of some substance, not an error page).
    let shot = dir.path().join("report.png");
    headless(&chromium, &profile, &[format!("--screenshot={}", shot.display()), "--window-size=1280,2400".into(), "--virtual-time-budget=5000".into()], &html_path);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 30_000, "screenshot of {} bytes", png.len());
}

#[test]
fn report_selects_runs_and_names_bad_values() {
    let g = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("report-select");
    dir.write("data/arith.jsonl", &arith_rows(6));
    let s = dir.write("suite.toml", &arith_suite(&g.base_url(), ""));
    let db = dir.db();
    let db = db.to_str().unwrap();
    let out_path = dir.path().join("r.html");
    let out = out_path.to_str().unwrap();

    let missing = dir.path().join("none.db");
    let o = llmeval(&["report", "--db", missing.to_str().unwrap(), "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!missing.exists(), "no database is created");

    let first = json_out(&llmeval(&["run", s.to_str().unwrap(), "--db", db, "--json"]))["run_id"].as_str().unwrap().to_string();
    let second = json_out(&llmeval(&["run", s.to_str().unwrap(), "--db", db, "--json", "--limit", "3"]))["run_id"].as_str().unwrap().to_string();
    // Default: the latest finished run of each suite.
    let o = llmeval(&["report", "--db", db, "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("1 run(s): {second}; 3 sample(s)")), "{}", stdout(&o));
    // Two runs of one suite: a row per model and run.
    assert_eq!(llmeval(&["runs", "tag", &first, "baseline", "--db", db]).status.code(), Some(0));
    let o = llmeval(&["report", "--db", db, "--runs", "baseline", "latest", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(&out_path).unwrap();
    assert!(html.contains(&format!("<td>remote-x @ {first}</td>")) && html.contains(&format!("<td>remote-x @ {second}</td>")));
    assert!(stdout(&o).contains("9 sample(s)"), "{}", stdout(&o));

    let o = llmeval(&["report", "--db", db, "--runs", "nope", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"nope\""), "{}", stderr(&o));
    let o = llmeval(&["report", "--db", db, "--suite", "other", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no run of suite \"other\"") && stderr(&o).contains("arith-demo"), "{}", stderr(&o));
    let o = llmeval(&["report", "--db", db, "--runs", &first, "--suite", "other", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is of suite \"arith-demo\", not \"other\""), "{}", stderr(&o));
    let o = llmeval(&["report", "--db", db, "--out", dir.path().join("no/such/dir/r.html").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot write") && stderr(&o).contains("no/such/dir/r.html"), "{}", stderr(&o));
}
