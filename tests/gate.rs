//! The regression gate on real runs against loopback servers with known outcomes: a candidate that
//! got worse on many items fails with exit 1 and names the items; a drop within noise, an
//! improvement and the same run pass; a task missing from the candidate fails; tolerances apply;
//! the JUnit output validates against `tests/goldens/junit.xsd` (xmllint).

use crate::server::FakeServer;
use crate::support::*;

#[test]
fn gate_fails_on_a_significant_drop_and_passes_otherwise() {
    let right = FakeServer::start(|p| format!(" {}", sum_of(p)));
    // Wrong on every question whose sum is a multiple of 4 (half of them).
    let worse = FakeServer::start(|p| { let s = sum_of(p); format!(" {}", if s % 4 == 0 { s + 1 } else { s }) });
    let dir = TempDir::new("gate");
    dir.write("data/arith.jsonl", &arith_rows(60));
    let db = dir.db();
    let run = |url: &str| {
        let suite = dir.write("suite.toml", &arith_suite(url, "").replace("metrics = [\"exact-match\"]", "metrics = [\"exact-match\", \"bleu\"]"));
        let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--no-cache"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json_out(&out)["run_id"].as_str().unwrap().to_string()
    };
    let base = run(&right.base_url());
    let tag = llmeval(&["runs", "tag", &base, "baseline", "--db", db.to_str().unwrap()]);
    assert_eq!(tag.status.code(), Some(0));
    let cand = run(&worse.base_url());
    let junit = dir.path().join("gate.xml");
    let md = dir.path().join("gate.md");
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "baseline", "--candidate", "latest", "--junit", junit.to_str().unwrap(), "--markdown", md.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "a significant drop is a regression: {}", stdout(&out));
    let v = json_out(&out);
    assert_eq!(v["verdict"], "regression");
    assert_eq!(v["candidate"], cand);
    let em = v["comparisons"].as_array().unwrap().iter().find(|c| c["metric"] == "exact-match").unwrap();
    // Items whose sum is a multiple of 4 flipped from right to wrong; McNemar with b = flips, c = 0.
    let evens: Vec<String> = arith_rows(60).lines().enumerate().filter(|(_, l)| sum_of(&format!("Q: {}", serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap())) % 4 == 0).map(|(i, _)| format!("q{i}")).collect();
    let flipped: Vec<String> = em["flipped"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    let mut sorted = flipped.clone();
    sorted.sort();
    let mut want = evens.clone();
    want.sort();
    assert_eq!(sorted, want);
    let p = llmeval::gate::mcnemar_exact(evens.len(), 0);
    assert!((em["p_value"].as_f64().unwrap() - p).abs() < 1e-12);
    assert_eq!(em["test"], "exact McNemar");
    let bleu = v["comparisons"].as_array().unwrap().iter().find(|c| c["metric"] == "bleu").unwrap();
    assert_eq!(bleu["test"], "paired randomization (corpus)");
    assert_eq!(v["correction"], "holm");
    // p-values adjusted (Holm) over the two comparisons
    let want = llmeval::gate::holm(&[em["p_value"].as_f64().unwrap(), bleu["p_value"].as_f64().unwrap()]);
    assert_eq!([em["p_adjusted"].as_f64().unwrap(), bleu["p_adjusted"].as_f64().unwrap()], [want[0], want[1]]);
    assert!(want[0] > em["p_value"].as_f64().unwrap(), "{em}");
    validate_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testcase classname=\"remote-x\" name=\"arith exact-match\">") && xml.contains("<failure"), "{xml}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("❌ regression") && md.contains("| remote-x | arith | exact-match |"), "{md}");

    // A generous tolerance accepts the same drop.
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "baseline", "--candidate", &cand, "--max-drop", "exact-match=0.9", "--max-drop", "bleu=100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // A tolerance for a metric the gate never meets is an error (a typo would silently not apply).
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "baseline", "--candidate", &cand, "--max-drop", "exact_match=0.9"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("--max-drop exact_match=…: no comparison has a metric named \"exact_match\"; the metrics compared are bleu, exact-match"), "{}", stderr(&out));
    // The baseline against itself passes.
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", &base, "--candidate", &base, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_out(&out)["verdict"], "pass");
    // Bad arguments are errors (exit 2).
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "nope", "--candidate", "latest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no run or tag named \"nope\""), "{}", stderr(&out));
}

/// Validates a JUnit file against the schema with xmllint (libxml2-utils; `.ci/run` installs it).
fn validate_junit(path: &std::path::Path) {
    let xsd = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/junit.xsd");
    let out = std::process::Command::new("xmllint").args(["--noout", "--schema", xsd]).arg(path).output();
    let out = out.unwrap_or_else(|e| panic!("xmllint is needed to validate JUnit output ({e}): apt-get install -y libxml2-utils"));
    assert!(out.status.success(), "{} does not validate: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn gate_passes_noise_and_improvements_and_fails_a_missing_task() {
    let right = FakeServer::start(|p| format!(" {}", sum_of(p)));
    // Wrong on one question of 60: a drop, but McNemar's p is 1.
    let once = FakeServer::start(|p| { let s = sum_of(p); format!(" {}", if s == 18 { s + 1 } else { s }) });
    // Wrong on every third question.
    let poor = FakeServer::start(|p| { let s = sum_of(p); format!(" {}", if s % 3 == 0 { s + 1 } else { s }) });
    let dir = TempDir::new("gate-outcomes");
    dir.write("data/arith.jsonl", &arith_rows(60));
    let db = dir.db();
    let run = |url: &str, two_tasks: bool| {
        let mut text = arith_suite(url, "");
        if two_tasks {
            let task = &text[text.find("[[task]]").unwrap()..];
            text = format!("{text}\n{}", task.replacen("name = \"arith\"", "name = \"arith-again\"", 1));
        }
        let suite = dir.write("suite.toml", &text);
        let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--no-cache"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json_out(&out)["run_id"].as_str().unwrap().to_string()
    };
    let gate = |base: &str, cand: &str, junit: Option<&std::path::Path>| {
        let mut args = vec!["gate", "--db", db.to_str().unwrap(), "--baseline", base, "--candidate", cand, "--json"];
        if let Some(j) = junit {
            args.extend(["--junit", j.to_str().unwrap()]);
        }
        let out = llmeval(&args);
        let v = json_out(&out);
        (out.status.code(), v)
    };
    let exact_match = |v: &serde_json::Value, task: &str| v["comparisons"].as_array().unwrap().iter().find(|c| c["metric"] == "exact-match" && c["task"] == task).cloned().unwrap();

    let base = run(&right.base_url(), true);
    // A drop within noise passes, and still names the item that flipped.
    let noisy = run(&once.base_url(), true);
    let (code, v) = gate(&base, &noisy, None);
    assert_eq!(code, Some(0), "{v}");
    let em = exact_match(&v, "arith");
    assert!((em["drop"].as_f64().unwrap() - 1.0 / 60.0).abs() < 1e-12, "{em}");
    assert_eq!(em["p_value"].as_f64().unwrap(), 1.0);
    assert_eq!(em["regression"], false);
    assert_eq!(em["flipped"], serde_json::json!(["q0"]));

    // An improvement passes: the baseline is the poor run, the candidate the right one.
    let poor_run = run(&poor.base_url(), true);
    let (code, v) = gate(&poor_run, &base, None);
    assert_eq!(code, Some(0), "{v}");
    let em = exact_match(&v, "arith");
    assert!(em["drop"].as_f64().unwrap() < -0.3, "{em}");
    assert!(em["p_value"].as_f64().unwrap() < 0.001, "an improvement this large is significant: {em}");
    assert_eq!(v["verdict"], "pass");
    // ... and the reverse is a regression.
    let (code, _) = gate(&base, &poor_run, None);
    assert_eq!(code, Some(1));

    // A candidate without one of the baseline's tasks fails, even with every other item right.
    let fewer = run(&right.base_url(), false);
    let junit = dir.path().join("missing.xml");
    let (code, v) = gate(&base, &fewer, Some(&junit));
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["verdict"], "regression");
    let gone = exact_match(&v, "arith-again");
    assert_eq!(gone["missing_items"], 60);
    assert_eq!(gone["n"], 0);
    assert_eq!(exact_match(&v, "arith")["regression"], false);
    validate_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("type=\"missing\""), "{xml}");

    // A candidate with every item errored is missing all of them: a failure, not a usage error.
    let dead = FakeServer::start(|_| String::new());
    dead.set_faults(|_, _| crate::server::Fault::BadRequest);
    let suite = dir.write("suite.toml", &arith_suite(&dead.base_url(), ""));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--no-cache"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let dead_run = json_out(&out)["run_id"].as_str().unwrap().to_string();
    let (code, v) = gate(&fewer, &dead_run, None);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(exact_match(&v, "arith")["missing_items"], 60);
    // --limit 0 would store an empty run as complete (and make it `latest`).
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--limit 0 evaluates nothing"), "{}", stderr(&out));
}
