//! Helpers: temporary suites and databases, running the real binary.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_llmeval");

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("llmeval-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, rel: &str, body: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, body).unwrap();
        p
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("results.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `llmeval` with `args` and returns its output.
pub fn llmeval(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("LLMEVAL_DB").output().expect("spawn llmeval")
}

/// Starts `llmeval` with `args` (stdout dropped, stderr to `stderr`) and returns once
/// `answered()` reaches `n`: a run part-way, to be killed or interrupted.
pub fn spawn_until(args: &[&str], stderr: std::process::Stdio, answered: impl Fn() -> usize, n: usize) -> std::process::Child {
    let child = Command::new(BIN).args(args).env_remove("LLMEVAL_DB").stdout(std::process::Stdio::null()).stderr(stderr).spawn().expect("spawn llmeval");
    let t = std::time::Instant::now();
    while answered() < n {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the run did not progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

/// The error texts of the newest run's samples.
pub fn sample_errors(db: &std::path::Path) -> Vec<String> {
    let show = json_out(&llmeval(&["runs", "show", "latest", "--db", db.to_str().unwrap(), "--samples", "--json"]));
    show["samples"].as_array().unwrap().iter().filter_map(|s| s["error"].as_str().map(str::to_string)).collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses stdout as JSON, with the whole output in the panic message when it is not.
pub fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", stdout(o), stderr(o)))
}

/// `n` arithmetic rows as JSONL.
pub fn arith_rows(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let (a, b) = ((i * 37 + 11) % 1000, (i * 53 + 7) % 1000);
        s.push_str(&format!("{{\"id\": \"q{i}\", \"question\": \"{a}+{b}\", \"answer\": \"{}\"}}\n", a + b));
    }
    s
}

/// A `[[model]]` block: `name` in results, served as `served` by the server at `base_url`, with
/// `extra` lines (keys of the model) after it.
pub fn remote_model(name: &str, base_url: &str, served: &str, extra: &str) -> String {
    format!("[[model]]\nname = \"{name}\"\nengine = \"openai\"\nbase-url = \"{base_url}\"\nmodel = \"{served}\"\n{extra}\n")
}

/// A generate task `arith` over `data/arith.jsonl` (prompt `Q: question\nA:`, target the answer),
/// with `extra` lines (keys of the task) after it.
pub fn arith_task(extra: &str) -> String {
    format!("[[task]]\nname = \"arith\"\nkind = \"generate\"\ndata = \"data/arith.jsonl\"\nprompt = \"Q: {{{{ question }}}}\\nA:\"\ntarget = \"{{{{ answer }}}}\"\n{extra}\n")
}

/// A suite with one remote model and one generate task over `data/arith.jsonl`.
pub fn arith_suite(base_url: &str, model_extra: &str) -> String {
    format!(
        r#"name = "arith-demo"

{}
{}"#,
        remote_model("remote-x", base_url, "served-model-name", &format!("api = \"chat\"\n{model_extra}")),
        arith_task("max-tokens = 8\nextract = { regex = \"(-?\\\\d+)\" }\nmetrics = [\"exact-match\"]"),
    )
}

/// The expected exact-match of the fake server on `arith_rows(n)`.
pub fn arith_expected(n: usize) -> f64 {
    let mut right = 0;
    for i in 0..n {
        let (a, b) = ((i * 37 + 11) % 1000, (i * 53 + 7) % 1000);
        let ans = crate::server::arith_answer(&format!("Q: {a}+{b}\nA:"));
        if ans.trim() == (a + b).to_string() {
            right += 1;
        }
    }
    right as f64 / n as f64
}

/// `(model, task, metric) → result` from `run --json` output.
pub fn result<'a>(v: &'a Value, model: &str, task: &str, metric: &str) -> &'a Value {
    v["results"]
        .as_array()
        .expect("results array")
        .iter()
        .find(|r| r["model"] == model && r["task"] == task && r["metric"] == metric)
        .unwrap_or_else(|| panic!("no result {model}/{task}/{metric} in {v}"))
}

/// The correct sum for the last "Q: a+b" question in a prompt (0 when there is none).
pub fn sum_of(text: &str) -> i64 {
    let q = text.rsplit("Q: ").next().unwrap_or("");
    let (a, b) = q.lines().next().unwrap_or("").split_once('+').unwrap_or(("0", "0"));
    a.trim().parse::<i64>().unwrap_or(0) + b.trim().parse::<i64>().unwrap_or(0)
}
