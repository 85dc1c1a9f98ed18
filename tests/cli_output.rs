//! Snapshots of what people read: the CLI's help and the text of its main commands, whole, so that
//! a change to any of it shows in review (`tests/snapshots/`; after an intended change, rerun
//! with `INSTA_UPDATE=always` and read the diff). What differs between runs — run ids, times,
//! temporary paths, ports, hashes — is replaced by placeholders.

use crate::server::FakeServer;
use crate::support::*;

/// The placeholders for what changes from run to run; `dir` is the test's temporary directory.
fn filters(dir: &TempDir) -> Vec<(String, String)> {
    vec![
        (regex_escape(&dir.path().display().to_string()), "[DIR]".into()),
        (r"\d{8}-\d{6}-[0-9a-f]{6}".into(), "[RUN]".into()),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z".into(), "[TIME]".into()),
        (r"http://127\.0\.0\.1:\d+".into(), "http://[HOST]".into()),
        (r"\b[0-9a-f]{12}\b".into(), "[HASH]".into()),
    ]
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' { c.to_string() } else { format!("\\{c}") }).collect()
}

/// Asserts the snapshot `name` of `text` with `dir`'s placeholders.
fn snap(dir: &TempDir, name: &str, text: &str) {
    let filters = filters(dir);
    let mut settings = insta::Settings::clone_current();
    for (from, to) in &filters {
        settings.add_filter(from, to.as_str());
    }
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// `llmeval run` as text, then `runs list`, `runs show`, `cache list` and a failing `gate`, on
/// runs against loopback servers with known answers.
#[test]
fn run_runs_cache_and_gate_text() {
    let right = FakeServer::start(|p| format!(" {}", sum_of(p)));
    let worse = FakeServer::start(|p| {
        let s = sum_of(p);
        format!(" {}", if s % 4 == 0 { s + 1 } else { s })
    });
    let dir = TempDir::new("snap-run");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let db = dir.db();
    let db_s = db.to_str().unwrap();
    let run = |url: &str| {
        let suite = dir.write("suite.toml", &arith_suite(url, "").replace("metrics = [\"exact-match\"]", "metrics = [\"exact-match\", \"bleu\", \"rougeL\"]"));
        let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db_s, "--no-cache"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    };
    let first = run(&right.base_url());
    snap(&dir, "run", &format!("{}--- stderr\n{}", stdout(&first), stderr(&first)));
    assert_eq!(llmeval(&["runs", "tag", "latest", "baseline", "--db", db_s]).status.code(), Some(0));
    run(&worse.base_url());
    snap(&dir, "runs_list", &stdout(&llmeval(&["runs", "list", "--db", db_s])));
    snap(&dir, "runs_show", &stdout(&llmeval(&["runs", "show", "baseline", "--db", db_s])));
    snap(&dir, "cache_list", &stdout(&llmeval(&["cache", "list", "--db", db_s])));
    let gate = llmeval(&["gate", "--db", db_s, "--baseline", "baseline", "--candidate", "latest"]);
    assert_eq!(gate.status.code(), Some(1));
    snap(&dir, "gate", &stdout(&gate));
}

/// `llmeval metrics` and `arena ratings` print tables of fixed inputs.
#[test]
fn metrics_and_ratings_text() {
    let dir = TempDir::new("snap-metrics");
    let hyp = dir.write("hyp.txt", "the cat sat on the mat\nthere is a dog in the garden\nrunning quickly home\n");
    let r = dir.write("ref.txt", "the cat is on the mat\na dog is in the garden\nhe runs home quickly\n");
    let (hyp, r) = (hyp.to_str().unwrap(), r.to_str().unwrap());
    let mut text = String::new();
    for args in [
        vec!["metrics", "bleu", "--hyp", hyp, "--ref", r],
        vec!["metrics", "chrf", "--hyp", hyp, "--ref", r, "--word-order", "2"],
        vec!["metrics", "rouge", "--hyp", hyp, "--ref", r, "--stem"],
    ] {
        let out = llmeval(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        text.push_str(&format!("$ llmeval {}\n{}\n", args.join(" "), stdout(&out)));
    }
    snap(&dir, "metrics", &text);
    let battles = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/battles.jsonl");
    let out = llmeval(&["arena", "ratings", "--battles", battles, "--method", "bt"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    snap(&dir, "arena_ratings", &stdout(&out));
}

/// The top-level help and each command's, as `--help` prints them.
#[test]
fn help_text() {
    let dir = TempDir::new("snap-help");
    let mut text = String::new();
    for cmd in [&[][..], &["run"], &["runs"], &["cache"], &["cache", "clear"], &["gate"], &["metrics"], &["arena"], &["engine"]] {
        let out = llmeval(&[cmd, &["--help"]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        text.push_str(&format!("$ llmeval {}\n{}\n", [cmd, &["--help"]].concat().join(" "), stdout(&out)));
    }
    snap(&dir, "help", &text);
}
