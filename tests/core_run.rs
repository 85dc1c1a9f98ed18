//! `llmeval run` end to end against the loopback server: results, JSON shape, cache, categories,
//! multiple choice (log-probabilities and the chat fallback), loglikelihood and perplexity tasks,
//! the API key never stored.

use crate::server::{fake_is_top, fake_logprob, fake_tokens, FakeServer, Fault};
use crate::support::*;

#[test]
fn generate_task_json_shape_and_values() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("gen");
    dir.write("data/arith.jsonl", &arith_rows(60));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 4"));
    let db = dir.db();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["results", "run_id", "status", "suite"]);
    assert_eq!(v["suite"], "arith-demo");
    assert_eq!(v["status"], "complete");
    let r = result(&v, "remote-x", "arith", "exact-match");
    let mut rk: Vec<&String> = r.as_object().unwrap().keys().collect();
    rk.sort();
    assert_eq!(rk, ["ci95", "errors", "metric", "model", "n", "stderr", "task", "value"]);
    let expected = arith_expected(60);
    assert!((r["value"].as_f64().unwrap() - expected).abs() < 1e-12, "{r}");
    assert_eq!(r["n"], 60);
    assert_eq!(r["errors"], 0);
    // stderr = sample sd / sqrt(n) for a proportion p: sqrt(p(1-p) n/(n-1) / n)
    let se = (expected * (1.0 - expected) / 59.0).sqrt();
    assert!((r["stderr"].as_f64().unwrap() - se).abs() < 1e-9);
    let ci = r["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() < expected && expected < ci[1].as_f64().unwrap());
    assert_eq!(server.log().len(), 60);

    // A second run reuses every cached answer; --no-cache asks again.
    server.clear_log();
    let again = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(server.log().len(), 0, "cached answers must not be requested again");
    assert_eq!(result(&json_out(&again), "remote-x", "arith", "exact-match")["value"], r["value"]);
    let fresh = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--no-cache", "--limit", "10"]);
    assert_eq!(fresh.status.code(), Some(0));
    assert_eq!(server.log().len(), 10);

    // Runs are listed and shown, with samples.
    let list = llmeval(&["runs", "list", "--db", db.to_str().unwrap(), "--json"]);
    assert_eq!(json_out(&list).as_array().unwrap().len(), 3);
    let show = llmeval(&["runs", "show", v["run_id"].as_str().unwrap(), "--db", db.to_str().unwrap(), "--samples", "--json"]);
    let shown = json_out(&show);
    assert_eq!(shown["samples"].as_array().unwrap().len(), 60);
    let s0 = &shown["samples"][0];
    assert!(s0["prompt"].as_str().unwrap().starts_with("Q: "));
    assert!(s0["response"].is_string() && s0["answer"].is_string() && s0["target"].is_string());
}

#[test]
fn human_table_and_categories() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("cat");
    let mut rows = String::new();
    for i in 0..20 {
        // a blank category is reported as "(none)": "" is the whole task's row
        let level = match i {
            0..10 => "small",
            19 => " ",
            _ => "big",
        };
        rows.push_str(&format!("{{\"question\": \"{i}+1\", \"answer\": \"{}\", \"level\": \"{level}\"}}\n", i + 1));
    }
    dir.write("data/arith.jsonl", &rows);
    let suite = arith_suite(&server.base_url(), "").replace("metrics = [\"exact-match\"]", "metrics = [\"exact-match\", \"contains\", \"f1\"]\ncategory = \"{{ level }}\"");
    let suite = dir.write("suite.toml", &suite);
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("arith / small") && text.contains("arith / big"), "{text}");
    assert!(text.contains("exact-match") && text.contains("contains") && text.contains("f1"), "{text}");
    let show = json_out(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--json"]));
    let cats: Vec<&str> = show["results"].as_array().unwrap().iter().filter(|r| r["metric"] == "exact-match").map(|r| r["category"].as_str().unwrap()).collect();
    assert_eq!(cats, ["", "(none)", "big", "small"]);
}

fn mc_suite(base: &str, api: &str) -> String {
    format!(
        r#"name = "mc"
[[model]]
name = "m"
engine = "openai"
base-url = "{base}"
model = "x"
api = "{api}"

[[task]]
name = "pick"
kind = "multiple-choice"
data = "data/mc.jsonl"
prompt = "Question: {{{{ q }}}}\nAnswer:"
choices = "options"
gold = "label"
"#
    )
}

fn mc_rows() -> (String, Vec<(String, Vec<String>, usize)>) {
    let mut s = String::new();
    let mut rows = Vec::new();
    for i in 0..30 {
        let q = format!("which word number {i}?");
        let opts: Vec<String> = (0..4).map(|j| format!("option{} {}", i * 4 + j, "long ".repeat(j))).map(|o| o.trim().to_string()).collect();
        let label = i % 4;
        s.push_str(&serde_json::json!({"q": q, "options": opts, "label": label}).to_string());
        s.push('\n');
        rows.push((q, opts, label));
    }
    (s, rows)
}

#[test]
fn multiple_choice_by_loglikelihood_equals_lm_eval_rules() {
    let server = FakeServer::start(|_| String::new());
    let dir = TempDir::new("mc");
    let (data, rows) = mc_rows();
    dir.write("data/mc.jsonl", &data);
    let suite = dir.write("suite.toml", &mc_suite(&server.base_url(), "completions"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    // Recompute acc / acc_norm from the fake model's log-probabilities, lm-eval style.
    let (mut acc, mut acc_norm) = (0.0, 0.0);
    for (q, opts, label) in &rows {
        let ctx = format!("Question: {q}\nAnswer:");
        let mut lls = Vec::new();
        for o in opts {
            let full = format!("{ctx} {o}");
            let toks = fake_tokens(&full);
            let ctx_chars = ctx.chars().count();
            let mut off = 0;
            let mut ll = 0.0;
            for (i, t) in toks.iter().enumerate() {
                let end = off + t.chars().count();
                if end > ctx_chars {
                    ll += fake_logprob(&toks, i);
                }
                off = end;
            }
            lls.push(ll);
        }
        let argmax = |xs: &[f64]| xs.iter().enumerate().fold(0, |b, (i, x)| if *x > xs[b] { i } else { b });
        acc += f64::from(argmax(&lls) == *label);
        let normed: Vec<f64> = lls.iter().zip(opts).map(|(l, o)| l / o.chars().count() as f64).collect();
        acc_norm += f64::from(argmax(&normed) == *label);
    }
    let n = rows.len() as f64;
    assert!((result(&v, "m", "pick", "acc")["value"].as_f64().unwrap() - acc / n).abs() < 1e-12);
    assert!((result(&v, "m", "pick", "acc-norm")["value"].as_f64().unwrap() - acc_norm / n).abs() < 1e-12);
    // One echo request per choice, with logprobs.
    let log = server.log();
    assert_eq!(log.len(), 120);
    assert!(log.iter().all(|r| r.path == "/v1/completions" && r.body["echo"] == true && r.body["logprobs"] == 1));
}

#[test]
fn multiple_choice_on_chat_only_endpoint_falls_back_to_letters() {
    // The fake chat model answers with the letter of option index (question number % 3).
    let server = FakeServer::start(|prompt| {
        let n: usize = prompt.split("number ").nth(1).and_then(|s| s.split('?').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
        format!("The answer is ({}).", (b'A' + (n % 3) as u8) as char)
    });
    let dir = TempDir::new("mcchat");
    let (data, rows) = mc_rows();
    dir.write("data/mc.jsonl", &data);
    let suite = dir.write("suite.toml", &mc_suite(&server.base_url(), "chat"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let expected = rows.iter().enumerate().filter(|(i, r)| i % 3 == r.2).count() as f64 / rows.len() as f64;
    assert!((result(&v, "m", "pick", "acc")["value"].as_f64().unwrap() - expected).abs() < 1e-12);
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["metric"] != "acc-norm"), "acc-norm needs logprobs");
    assert!(stderr(&out).contains("no log-probabilities"), "the summary says how it was scored: {}", stderr(&out));
    let prompt = server.log()[0].key.clone();
    assert!(prompt.contains("A. option") && prompt.contains("D. option"), "{prompt}");
}

#[test]
fn loglikelihood_and_perplexity_tasks() {
    let server = FakeServer::start(|_| String::new());
    let dir = TempDir::new("ll");
    let mut rows = String::new();
    let texts = ["The cat sat on the mat.", "A quick brown fox", "  leading and trailing  "];
    for t in texts {
        rows.push_str(&serde_json::json!({"ctx": "Say:", "cont": t, "text": t}).to_string());
        rows.push('\n');
    }
    dir.write("data/t.jsonl", &rows);
    let suite = format!(
        r#"name = "ll"
[[model]]
name = "m"
engine = "openai"
base-url = "{}"
model = "x"
api = "completions"

[[task]]
name = "cont"
kind = "loglikelihood"
data = "data/t.jsonl"
prompt = "{{{{ ctx }}}}"
target = "{{{{ cont }}}}"
metrics = ["loglikelihood", "acc", "perplexity"]

[[task]]
name = "ppl"
kind = "perplexity"
data = "data/t.jsonl"
prompt = "{{{{ text }}}}"
"#,
        server.base_url()
    );
    let suite = dir.write("suite.toml", &suite);
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let (mut lls, mut greedy) = (Vec::new(), 0.0);
    let (mut total_ll, mut words, mut bytes) = (0.0, 0.0, 0.0);
    for t in texts {
        let ctx = "Say:";
        let toks = fake_tokens(&format!("{ctx} {t}"));
        let mut off = 0;
        let (mut ll, mut g) = (0.0, true);
        for (i, tok) in toks.iter().enumerate() {
            let end = off + tok.chars().count();
            if end > ctx.len() {
                ll += fake_logprob(&toks, i);
                g &= fake_is_top(&toks, i);
            }
            off = end;
        }
        lls.push(ll);
        greedy += f64::from(g);
        let toks = fake_tokens(t);
        total_ll += (1..toks.len()).map(|i| fake_logprob(&toks, i)).sum::<f64>();
        words += regex_split_count(t) as f64;
        bytes += t.len() as f64;
    }
    let mean_ll = lls.iter().sum::<f64>() / 3.0;
    assert!((result(&v, "m", "cont", "loglikelihood")["value"].as_f64().unwrap() - mean_ll).abs() < 1e-9);
    assert!((result(&v, "m", "cont", "acc")["value"].as_f64().unwrap() - greedy / 3.0).abs() < 1e-12);
    assert!((result(&v, "m", "cont", "perplexity")["value"].as_f64().unwrap() - (-mean_ll).exp()).abs() < 1e-9);
    assert!((result(&v, "m", "ppl", "word-perplexity")["value"].as_f64().unwrap() - (-total_ll / words).exp()).abs() < 1e-9);
    assert!((result(&v, "m", "ppl", "byte-perplexity")["value"].as_f64().unwrap() - (-total_ll / bytes).exp()).abs() < 1e-9);
    assert!((result(&v, "m", "ppl", "bits-per-byte")["value"].as_f64().unwrap() - (-total_ll / bytes / std::f64::consts::LN_2)).abs() < 1e-9);
    // Corpus metrics carry a bootstrap interval.
    assert!(result(&v, "m", "ppl", "word-perplexity")["ci95"].is_array());

    // A server that gives no top_logprobs: greediness cannot be told, so acc has no value (not 0)
    // and the run says why; the log-likelihoods are the same.
    server.set_faults(|prompt, _| {
        let mut body = crate::server::echo_body(prompt);
        body["choices"][0]["logprobs"]["top_logprobs"] = serde_json::Value::Null;
        Fault::Body(body.to_string())
    });
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json", "--no-cache"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert!((result(&v, "m", "cont", "loglikelihood")["value"].as_f64().unwrap() - mean_ll).abs() < 1e-9);
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["metric"] != "acc" || r["value"].is_null()), "{v}");
    assert!(stderr(&out).contains("task \"cont\", model \"m\": acc has no value for 3 of 3 answered items: the server gave no top_logprobs"), "{}", stderr(&out));
}

/// `len(re.split(r"\s+", t))`.
fn regex_split_count(t: &str) -> usize {
    let mut n = 1;
    let mut in_ws = false;
    for c in t.chars() {
        if c.is_whitespace() {
            if !in_ws {
                n += 1;
            }
            in_ws = true;
        } else {
            in_ws = false;
        }
    }
    n
}

#[test]
fn few_shot_follows_lm_eval_and_never_shows_the_evaluated_row() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("fewshot");
    dir.write("data/arith.jsonl", &arith_rows(12));
    let suite = arith_suite(&server.base_url(), "").replace("max-tokens = 8", "max-tokens = 8\nfew-shot = { n = 3 }");
    let suite = dir.write("suite.toml", &suite);
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = server.log();
    assert_eq!(log.len(), 12);
    for r in &log {
        let blocks: Vec<&str> = r.key.split("\n\n").collect();
        assert_eq!(blocks.len(), 4, "3 examples then the question: {:?}", r.key);
        let question = blocks[3];
        for ex in &blocks[..3] {
            let (q, a) = ex.split_once("\nA: ").expect("example is prompt + ' ' + target");
            let (x, y) = q.trim_start_matches("Q: ").split_once('+').unwrap();
            assert_eq!(a.parse::<i64>().unwrap(), x.parse::<i64>().unwrap() + y.parse::<i64>().unwrap(), "{ex:?}");
            assert_ne!(ex.split('\n').next(), question.split('\n').next(), "the evaluated row is never its own example");
        }
    }
    // Python: r = random.Random(1234); r.sample(range(12), 4) for each of the 12 docs in order;
    // the first doc draws [7, 1, 0, 10]; dropping the doc itself leaves rows 7, 1, 10.
    let first = log.iter().find(|r| r.key.ends_with("Q: 11+7\nA:")).expect("first row requested");
    let rows: Vec<String> = arith_rows(12).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_string()).collect();
    let shown: Vec<String> = first.key.split("\n\n").take(3).map(|b| b.trim_start_matches("Q: ").split('\n').next().unwrap().to_string()).collect();
    let py: Vec<String> = [7usize, 1, 0, 10].iter().filter(|&&j| j != 0).take(3).map(|&j| rows[j].clone()).collect();
    assert_eq!(shown, py);
}

#[test]
fn api_key_never_reaches_the_database_or_output() {
    let server = FakeServer::start(crate::server::arith_answer);
    let secret = "sk-test-4f9a8b7c6d5e4f3a2b1c";
    server.require_key(secret);
    let dir = TempDir::new("key");
    dir.write("data/arith.jsonl", &arith_rows(10));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "api-key-env = \"LLMEVAL_TEST_KEY\""));
    let out = std::process::Command::new(BIN)
        .args(["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"])
        .env("LLMEVAL_TEST_KEY", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(server.log().iter().all(|r| r.authorization.as_deref() == Some(&format!("Bearer {secret}"))));
    let show = llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--samples", "--json"]);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            bytes.extend(std::fs::read(&p).unwrap());
        }
    }
    bytes.extend(&out.stdout);
    bytes.extend(&out.stderr);
    bytes.extend(&show.stdout);
    let hay = String::from_utf8_lossy(&bytes);
    assert!(!hay.contains(secret), "the API key leaked");
    assert!(!hay.contains("4f9a8b7c6d5e"), "part of the API key leaked");
    assert!(stdout(&show).contains("LLMEVAL_TEST_KEY"), "the variable's name is kept");

    // Without the variable set: one clear error before any request.
    server.clear_log();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("LLMEVAL_TEST_KEY"), "{}", stderr(&out));
    assert!(server.log().is_empty());
}

#[test]
fn shipped_arith_suite_runs_against_a_named_endpoint() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("shipped");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/arith-demo.toml");
    let out = std::process::Command::new(BIN)
        .args(["run", suite, "--db", dir.db().to_str().unwrap(), "--json", "--limit", "50"])
        .env("LLMEVAL_BASE_URL", server.base_url())
        .env("LLMEVAL_MODEL", "my-model")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(result(&v, "remote-x", "arith", "exact-match")["n"], 50);
    let log = server.log();
    assert_eq!(log.len(), 50);
    assert!(log.iter().all(|r| r.body["model"] == "my-model" && r.path == "/v1/completions"));
    // Five few-shot examples from the train file precede each question.
    assert!(log.iter().all(|r| r.key.matches("\nA: ").count() == 5), "{}", log[0].key);
}

#[test]
fn text_metrics_in_a_suite_report_corpus_values_with_bootstrap_intervals() {
    // The fake model answers every "Q: a+b" with " a+b" spelled out, so BLEU is partial.
    let server = FakeServer::start(|prompt| format!(" the answer is {}", prompt.rsplit("Q: ").next().unwrap_or("").lines().next().unwrap_or("")));
    let dir = TempDir::new("textmetrics");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = arith_suite(&server.base_url(), "").replace(
        "extract = { regex = \"(-?\\\\d+)\" }\nmetrics = [\"exact-match\"]",
        "target-delimiter = \" \"\nmetrics = [\"bleu\", \"bleu-char\", \"chrf\", \"rougeL\", \"chatglm-bleu-4\", \"distinct-1\"]",
    );
    let suite = suite.replace("target = \"{{ answer }}\"", "target = \"the answer is {{ question }} = {{ answer }}\"");
    let suite = dir.write("suite.toml", &suite);
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    // Recompute BLEU over the stored answers and targets with the library: the suite's corpus value
    // is the corpus BLEU, not a mean of sentence BLEUs.
    let show = json_out(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--samples", "--json"]));
    let samples = show["samples"].as_array().unwrap();
    let hyps: Vec<&str> = samples.iter().map(|s| s["answer"].as_str().unwrap()).collect();
    let refs: Vec<&str> = samples.iter().map(|s| s["target"].as_str().unwrap()).collect();
    let bleu = llmeval::metric::sacrebleu::corpus_bleu(&hyps, std::slice::from_ref(&refs), &Default::default()).score;
    let r = result(&v, "remote-x", "arith", "bleu");
    assert!((r["value"].as_f64().unwrap() - bleu).abs() < 1e-9, "{r} vs {bleu}");
    let ci = r["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= bleu && bleu <= ci[1].as_f64().unwrap(), "{r}");
    // bleu-char: the same corpus BLEU with sacrebleu's character tokenizer
    let o = llmeval::metric::sacrebleu::BleuOptions { tokenize: llmeval::metric::sacrebleu::Tokenize::Char, ..Default::default() };
    let by_char = llmeval::metric::sacrebleu::corpus_bleu(&hyps, std::slice::from_ref(&refs), &o).score;
    let r = result(&v, "remote-x", "arith", "bleu-char");
    assert!((r["value"].as_f64().unwrap() - by_char).abs() < 1e-9 && (by_char - bleu).abs() > 1.0, "{r} vs {by_char} (13a: {bleu})");
    for m in ["chrf", "rougeL", "chatglm-bleu-4", "distinct-1"] {
        assert!(result(&v, "remote-x", "arith", m)["value"].as_f64().is_some(), "{m}");
    }
}

/// A results database this user may only read (a shared file, a read-only mount): the reading
/// commands read it; nothing is written beside it. As root, file modes do not bind, so the commands
/// run as `nobody` through `setpriv` where it exists.
#[test]
fn read_only_database_is_read_by_the_reading_commands() {
    use std::os::unix::fs::PermissionsExt;
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("ro-db");
    dir.write("data/arith.jsonl", &arith_rows(6));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let db_dir = dir.path().join("shared");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("results.db");
    let db_s = db.to_str().unwrap();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let uid = String::from_utf8(std::process::Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let as_nobody = uid.trim() == "0";
    if as_nobody && std::process::Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: running as root without setpriv, a read-only file cannot be made");
        return;
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let report = std::env::temp_dir().join(format!("llmeval-ro-report-{}.html", std::process::id()));
    let report_s = report.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut c = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
            c
        } else {
            std::process::Command::new(BIN)
        };
        c.args(args).env_remove("LLMEVAL_DB").output().unwrap()
    };
    for args in [
        vec!["runs", "list", "--db", db_s],
        vec!["runs", "show", "latest", "--db", db_s, "--json"],
        vec!["leaderboard", "--db", db_s],
        vec!["report", "--db", db_s, "--out", report_s],
        vec!["gate", "--db", db_s, "--baseline", "latest", "--candidate", "latest"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let show = json_out(&run(&["runs", "show", "latest", "--db", db_s, "--json"]));
    assert_eq!(show["status"], "complete", "{show}");
    // Writing commands say the database cannot be written.
    let out = run(&["runs", "tag", "latest", "base", "--db", db_s]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("results.db") && stderr(&out).contains("readonly"), "{}", stderr(&out));
    let names: Vec<String> = std::fs::read_dir(&db_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["results.db"], "nothing was written beside the database");
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(&report);
}

/// `runs delete` takes a run with everything stored under it, resolves every name before deleting
/// any, and leaves a run another process is working on alone.
#[test]
fn runs_delete_removes_a_run_and_what_hangs_on_it() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("runs-delete");
    dir.write("data/arith.jsonl", &arith_rows(4));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let db = dir.db();
    let (suite, db_s) = (suite.to_str().unwrap(), db.to_str().unwrap());
    let ids: Vec<String> = (0..3).map(|_| json_out(&llmeval(&["run", suite, "--db", db_s, "--json"]))["run_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(llmeval(&["runs", "tag", &ids[0], "base", "--db", db_s]).status.code(), Some(0));
    let count = |sql: &str| -> i64 { rusqlite::Connection::open(&db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap() };
    // a name that resolves to nothing: nothing is deleted
    let out = llmeval(&["runs", "delete", "base", "nope", "--db", db_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    assert_eq!(count("SELECT count(*) FROM runs"), 3);
    // a tag and `latest`, one run named twice
    let out = llmeval(&["runs", "delete", "base", &ids[0], "latest", "--db", db_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("deleted run {} (suite arith-demo, 4 samples; tags base)\ndeleted run {} (suite arith-demo, 4 samples)\n", ids[0], ids[2]));
    let list = json_out(&llmeval(&["runs", "list", "--db", db_s, "--json"]));
    assert_eq!(list.as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect::<Vec<_>>(), [ids[1].as_str()]);
    assert_eq!(count("SELECT count(*) FROM samples"), 4);
    assert_eq!(count(&format!("SELECT count(*) FROM aggregates WHERE run_id != '{}'", ids[1])), 0);
    assert_eq!(count("SELECT count(*) FROM tags"), 0);
    assert!(count("SELECT count(*) FROM responses") > 0, "the response cache stays");
    // a run another live process holds is not deleted
    let mut holder = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO leases (run_id, token, pid, host, since, seen_at) VALUES (?1, 't', ?2, ?3, ?4, ?4)", rusqlite::params![ids[1], holder.id(), host, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()])
        .unwrap();
    let out = llmeval(&["runs", "delete", &ids[1], "--db", db_s]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("in progress in another llmeval process (pid {}", holder.id())), "{}", stderr(&out));
    assert_eq!(count("SELECT count(*) FROM runs"), 1);
    // once that process is gone
    let out = llmeval(&["runs", "delete", &ids[1], "--db", db_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(count("SELECT count(*) FROM runs") + count("SELECT count(*) FROM samples") + count("SELECT count(*) FROM leases"), 0);
}

/// `cache list` shows the cache by model and kind; `cache clear` deletes what its conditions name
/// (and a later run asks those requests again), `runs delete --with-cache` takes a run's cached
/// responses with it, and responses left by deleted runs are listed and cleared as orphaned.
#[test]
fn cache_list_and_clear_by_model_run_and_orphans() {
    let (x, y) = (FakeServer::start(crate::server::arith_answer), FakeServer::start(crate::server::arith_answer));
    let dir = TempDir::new("cache-clear");
    dir.write("data/arith.jsonl", &arith_rows(4));
    let second = format!("\n{}", remote_model("remote-y", &y.base_url(), "other", ""));
    let suite = dir.write("suite.toml", &arith_suite(&x.base_url(), &second));
    let db = dir.db();
    let (suite, db_s) = (suite.to_str().unwrap(), db.to_str().unwrap());
    let run = || json_out(&llmeval(&["run", suite, "--db", db_s, "--json"]))["run_id"].as_str().unwrap().to_string();
    let count = |sql: &str| -> i64 { rusqlite::Connection::open(&db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap() };
    let first = run();
    let (x_label, y_label) = (format!("served-model-name at {}", x.base_url()), format!("other at {}", y.base_url()));
    let listed = |args: &[&str]| -> Vec<(String, i64, i64)> {
        let v = json_out(&llmeval(&[&["cache", "list", "--db", db_s, "--json"], args].concat()));
        v.as_array().unwrap().iter().map(|g| (format!("{} {}", g["model"].as_str().unwrap(), g["kind"].as_str().unwrap()), g["entries"].as_i64().unwrap(), g["orphaned"].as_i64().unwrap())).collect()
    };
    let mut both = vec![(format!("{x_label} generate"), 4, 0), (format!("{y_label} generate"), 4, 0)];
    both.sort();
    assert_eq!(listed(&[]), both);
    let text = stdout(&llmeval(&["cache", "list", "--db", db_s]));
    assert!(text.contains(&x_label) && text.contains("8 cached responses"), "{text}");

    // nothing named: refused; a dry run deletes nothing
    let out = llmeval(&["cache", "clear", "--db", db_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--all"), "{}", stderr(&out));
    let out = llmeval(&["cache", "clear", "--db", db_s, "--model", "other at", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&y_label) && stdout(&out).contains("would delete 4 cached responses"), "{}", stdout(&out));
    assert_eq!(count("SELECT count(*) FROM responses"), 8);

    let out = llmeval(&["cache", "clear", "--db", db_s, "--model", " "]);
    assert!(out.status.code() == Some(2) && stderr(&out).contains("every model"), "{}", stderr(&out));
    let out = llmeval(&["cache", "clear", "--db", db_s, "--run", "nope"]);
    assert!(out.status.code() == Some(2) && stderr(&out).contains("nope"), "{}", stderr(&out));
    let out = llmeval(&["cache", "clear", "--db", db_s, "--run", &first, "--older-than", "1d"]);
    assert!(stdout(&out).contains("deleted 0 cached responses"), "nothing is a day old: {}", stdout(&out));

    // one model's responses go: a new run asks that model again, and only that model
    let out = llmeval(&["cache", "clear", "--db", db_s, "--model", "other at"]);
    assert!(stdout(&out).contains("deleted 4 cached responses"), "{}", stdout(&out));
    assert_eq!(listed(&[]), [(format!("{x_label} generate"), 4, 0)]);
    let (xa, ya) = (x.answered(), y.answered());
    let second_run = run();
    assert_eq!((x.answered() - xa, y.answered() - ya), (0, 4));

    // a run deleted with its cache takes the responses it asked for; one deleted without leaves
    // orphans, listed and cleared as such
    let out = llmeval(&["runs", "delete", &second_run, "--with-cache", "--db", db_s]);
    assert!(stdout(&out).contains("; 4 cached responses)"), "{}", stdout(&out));
    assert_eq!(llmeval(&["runs", "delete", &first, "--db", db_s]).status.code(), Some(0));
    assert_eq!(listed(&[]), [(format!("{x_label} generate"), 4, 4)]);
    assert!(stdout(&llmeval(&["cache", "list", "--db", db_s])).contains("4 from deleted runs"));
    // responses cached before the model was recorded are listed and chosen as such
    rusqlite::Connection::open(&db).unwrap().execute("UPDATE responses SET model = NULL WHERE key IN (SELECT key FROM responses LIMIT 1)", []).unwrap();
    let out = llmeval(&["cache", "clear", "--db", db_s, "--model", "not recorded", "--vacuum"]);
    assert!(stdout(&out).contains("deleted 1 cached responses") && stdout(&out).contains("vacuumed"), "{}", stdout(&out));
    let out = llmeval(&["cache", "clear", "--db", db_s, "--orphaned", "--kind", "generate"]);
    assert!(stdout(&out).contains("deleted 3 cached responses"), "{}", stdout(&out));
    assert_eq!(stdout(&llmeval(&["cache", "list", "--db", db_s])), format!("the cache in {db_s} is empty\n"));
}
