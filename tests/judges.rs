//! LLM-as-judge end to end: candidate models and a judge behind loopback servers with scripted
//! verdicts (consistent, position-biased, unparsable, out of range), and the whole path offline
//! on the built-in engine.

use crate::server::FakeServer;
use crate::support::*;

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let s = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let e = text[s..].find(end).map(|i| s + i).unwrap_or(text.len());
    &text[s..e]
}

/// The fake judge: rates or compares by correctness; scripted misbehaviour on some questions.
fn judge(prompt: &str) -> String {
    let right = sum_of(prompt).to_string();
    let has = |a: &str| a.split(|c: char| !c.is_ascii_digit() && c != '-').any(|t| t == right);
    if prompt.contains("[The assistant's answer]") {
        let a = between(prompt, "[The assistant's answer]", "[End of answer]");
        if prompt.contains("Q: 11+7") {
            return "Rating: [[15]]".into(); // out of range: unparsed
        }
        if prompt.contains("Q: 48+60") {
            return "It is fine I guess.".into(); // no verdict: unparsed
        }
        return if has(a) { "Correct. Rating: [[9]]".into() } else { "Wrong sum. Rating: [[2]]".into() };
    }
    let a = between(prompt, "[Assistant A's answer]", "[End of assistant A's answer]");
    let b = between(prompt, "[Assistant B's answer]", "[End of assistant B's answer]");
    if prompt.contains("Q: 85+113") {
        return "Both look similar. [[A]]".into(); // always the first slot: inconsistent
    }
    if prompt.contains("Q: 122+166") {
        return "Hmm.".into(); // unparsed in both orders
    }
    match (has(a), has(b)) {
        (true, false) => "A is right. [[A]]".into(),
        (false, true) => "B is right. [[B]]".into(),
        _ => "Same quality. [[C]]".into(),
    }
}

fn suite(good: &str, bad: &str, judge: &str, metrics: &str) -> String {
    format!(
        r#"name = "judged"
{}{}{}
{}"#,
        remote_model("good", good, "g", ""),
        remote_model("bad", bad, "b", ""),
        remote_model("judge", judge, "j", "evaluate = false"),
        arith_task(&format!("human-label = \"{{{{ human }}}}\"\nmetrics = {metrics}")),
    )
}

/// A model that answers right, one that answers wrong, and the scripted judge.
fn servers() -> (FakeServer, FakeServer, FakeServer) {
    (FakeServer::start(crate::server::arith_answer), FakeServer::start(|p| format!(" {}", sum_of(p) + 3)), FakeServer::start(judge))
}

#[test]
fn single_and_pairwise_judging_with_reliability() {
    let (good, bad, judge_srv) = servers();
    let dir = TempDir::new("judges");
    // 10 items; humans prefer "good" except on three items (a tie, "bad", FastChat's both-bad
    // tie) and give no vote on one.
    let human_of = |i: usize| match i { 3 => "tie", 4 => "bad", 6 => "TIE (bothbad)", 7 => "", _ => "good" };
    let mut rows = String::new();
    for (i, line) in arith_rows(10).lines().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["human"] = serde_json::json!(human_of(i));
        rows.push_str(&v.to_string());
        rows.push('\n');
    }
    dir.write("data/arith.jsonl", &rows);
    let metrics = r#"["exact-match", { judge = "single", model = "judge" }, { judge = "pairwise", model = "judge", baseline = "bad" }]"#;
    let s = dir.write("suite.toml", &suite(&good.base_url(), &bad.base_url(), &judge_srv.base_url(), metrics));
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);

    // What the scripted judge must produce, computed by hand from the same rules.
    let qs: Vec<String> = arith_rows(10).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question"].as_str().unwrap().to_string()).collect();
    let good_right: Vec<bool> = qs.iter().map(|q| crate::server::arith_answer(&format!("Q: {q}\nA:")).trim() == sum_of(&format!("Q: {q}")).to_string()).collect();
    let unparsed_single = ["11+7", "48+60"];
    let ratings: Vec<f64> = qs.iter().zip(&good_right).filter(|(q, _)| !unparsed_single.contains(&q.as_str())).map(|(_, r)| if *r { 9.0 } else { 2.0 }).collect();
    let r = result(&v, "good", "arith", "judge-single");
    assert!((r["value"].as_f64().unwrap() - ratings.iter().sum::<f64>() / ratings.len() as f64).abs() < 1e-12, "{r}");
    assert_eq!(r["n"], ratings.len());
    let bad_single = result(&v, "bad", "arith", "judge-single");
    assert!((bad_single["value"].as_f64().unwrap() - 2.0).abs() < 1e-12, "{bad_single}");
    let rel = |name: &str| result(&v, "judge:judge", "arith", name)["value"].as_f64();
    assert_eq!(rel("judge-single:parse-failure-rate"), Some(4.0 / 20.0), "2 unparsed items × 2 models");

    // Pairwise vs the baseline: 10 pairs; 1 unparsed (122+166), 1 inconsistent (85+113, first slot).
    let pw = result(&v, "good", "arith", "judge-pairwise-vs-bad");
    let mut scores = Vec::new();
    for (q, right) in qs.iter().zip(&good_right) {
        match q.as_str() {
            "122+166" => {}
            "85+113" => scores.push(0.5),
            _ => scores.push(if *right { 1.0 } else { 0.5 }),
        }
    }
    assert!((pw["value"].as_f64().unwrap() - scores.iter().sum::<f64>() / scores.len() as f64).abs() < 1e-12, "{pw}");
    assert_eq!(pw["n"], 9);
    assert!(v["results"].as_array().unwrap().iter().all(|r| !(r["model"] == "bad" && r["metric"] == "judge-pairwise-vs-bad")), "the baseline is not scored against itself");
    assert_eq!(rel("judge-pairwise-vs-bad:parse-failure-rate"), Some(0.1));
    assert_eq!(rel("judge-pairwise-vs-bad:position-consistency"), Some(8.0 / 9.0));
    assert_eq!(rel("judge-pairwise-vs-bad:position-bias"), Some(1.0), "the one inconsistent pair favoured the first slot");
    let ties = scores.iter().filter(|s| **s == 0.5).count() as f64;
    assert_eq!(rel("judge-pairwise-vs-bad:tie-rate"), Some(ties / 9.0));
    // Human labels: judge winners vs humans over the parsed pairs with a human vote.
    let mut pairs = Vec::new();
    for (i, (q, right)) in qs.iter().zip(&good_right).enumerate() {
        if q == "122+166" || human_of(i).is_empty() {
            continue;
        }
        let judge_label = if q == "85+113" || !right { "tie" } else { "good" };
        let human = if human_of(i).to_lowercase().starts_with("tie") { "tie" } else { human_of(i) };
        pairs.push((judge_label.to_string(), human.to_string()));
    }
    assert_eq!(pairs.len(), 8 + usize::from(qs[7] == "122+166"));
    let agree = pairs.iter().filter(|(a, b)| a == b).count() as f64 / pairs.len() as f64;
    assert!((rel("judge-pairwise-vs-bad:human-agreement").unwrap() - agree).abs() < 1e-12);
    assert_eq!(result(&v, "judge:judge", "arith", "judge-pairwise-vs-bad:human-agreement")["n"], pairs.len());
    let kappa = llmeval::judge::cohen_kappa(&pairs).unwrap();
    assert!((rel("judge-pairwise-vs-bad:cohen-kappa").unwrap() - kappa).abs() < 1e-12);

    // Both orders were asked for every pair; the judge model was never evaluated itself.
    let log = judge_srv.log();
    let pairwise_calls = log.iter().filter(|r| r.key.contains("[Assistant A's answer]")).count();
    assert_eq!(pairwise_calls, 20);
    assert!(log.iter().all(|r| r.key.contains("[Question]")), "the judge only judges");
    // Judgments keep the raw text, the judge model and the template hash.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let (n, raw_unparsed): (i64, i64) = conn
        .query_row("SELECT count(*), sum(verdict = 'unparsed' AND raw IS NOT NULL) FROM judgments WHERE judge_model = 'judge' AND length(template_hash) = 16", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(n, 40);
    assert_eq!(raw_unparsed, 4 + 2);

    // Judged pairs are arena battles: 9 parsed pairs between good and bad.
    let ratings = json_out(&llmeval(&["arena", "ratings", "--db", dir.db().to_str().unwrap(), "--method", "elo", "--json"]));
    assert_eq!(ratings["battles"], 9);
    assert!(ratings["ratings"]["good"].as_f64().unwrap() > ratings["ratings"]["bad"].as_f64().unwrap());

    // Re-running reuses every cached judgment: no judge request.
    judge_srv.clear_log();
    let again = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(judge_srv.log().len(), 0);
    assert_eq!(result(&json_out(&again), "good", "arith", "judge-pairwise-vs-bad")["value"], pw["value"]);
}

#[test]
fn a_human_label_that_names_no_model_is_an_error() {
    let (good, bad, judge_srv) = servers();
    let dir = TempDir::new("judge-human-typo");
    let rows: String = arith_rows(3).lines().enumerate().map(|(i, l)| l.replace(&format!("\"q{i}\""), &format!("\"r{i}\"")).replacen('}', &format!(", \"human\": \"{}\"}}", if i == 1 { "goood" } else { "good" }), 1) + "\n").collect();
    dir.write("data/arith.jsonl", &rows);
    let metrics = r#"[{ judge = "pairwise", model = "judge", baseline = "bad" }]"#;
    let s = dir.write("suite.toml", &suite(&good.base_url(), &bad.base_url(), &judge_srv.base_url(), metrics));
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("task \"arith\", item r1") && e.contains("human-label gives \"goood\", which names no model of this run (good, bad)"), "{e}");
    // refused before the first request, not after every answer was paid for
    assert_eq!(good.log().len() + bad.log().len() + judge_srv.log().len(), 0);
    assert!(!stdout(&llmeval(&["runs", "list", "--db", dir.db().to_str().unwrap()])).contains("suite"), "no run is stored");
}

#[test]
fn judge_metric_errors_are_clear() {
    let dir = TempDir::new("judge-errors");
    dir.write("data/arith.jsonl", &arith_rows(2));
    for (metrics, want) in [
        (r#"[{ judge = "nope", model = "judge" }]"#, "unknown judge \"nope\""),
        (r#"[{ judge = "single", model = "ghost" }]"#, "judge model \"ghost\" is not a [[model]]"),
        (r#"[{ judge = "single" }]"#, "needs `model`"),
        (r#"[{ judge = "pairwise", model = "judge", baseline = "x", mode = "all-pairs" }]"#, "not both"),
        (r#"[{ judge = "single", model = "judge", colour = 1 }]"#, "unknown key `colour`"),
    ] {
        let s = dir.write("suite.toml", &suite("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", metrics));
        let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{metrics}");
        let e = stderr(&out);
        let line = std::fs::read_to_string(&s).unwrap().lines().position(|l| l.starts_with("metrics")).unwrap() + 1;
        assert!(e.contains(want) && e.contains(&format!("suite.toml:{line}")), "{metrics}: {e}");
    }
}

/// A judge whose every verdict is unparsed: its parse-failure-rate says so, and no note misreads
/// it as a metric that could not score ("scored by the judge phase").
#[test]
fn a_judge_that_never_gives_a_verdict() {
    let good = FakeServer::start(crate::server::arith_answer);
    let judge_srv = FakeServer::start(|_| "I would rather not say.".into());
    let dir = TempDir::new("judge-mute");
    dir.write("data/arith.jsonl", &arith_rows(3).replace("}\n", ", \"human\": \"\"}\n"));
    let metrics = r#"[{ judge = "single", model = "judge" }]"#;
    let s = dir.write("suite.toml", &suite(&good.base_url(), &good.base_url(), &judge_srv.base_url(), metrics));
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(result(&v, "judge:judge", "arith", "judge-single:parse-failure-rate")["value"], 1.0);
    assert!(!stderr(&out).contains("scored by the judge phase"), "{}", stderr(&out));
}

/// A judge endpoint that rejects every request stops the run (not an errored judge column), and
/// `--resume` judges once it takes the key; the answers are not asked again.
#[test]
fn a_judge_that_rejects_every_request_stops_the_run() {
    let (good, bad, judge_srv) = servers();
    judge_srv.require_key("sk-judge");
    let dir = TempDir::new("judge-rejects");
    dir.write("data/arith.jsonl", &arith_rows(3).replace("}\n", ", \"human\": \"\"}\n"));
    let s = dir.write("suite.toml", &suite(&good.base_url(), &bad.base_url(), &judge_srv.base_url(), r#"[{ judge = "single", model = "judge" }]"#));
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("model judge: the endpoint") && stderr(&out).contains("rejects every request"), "{}", stderr(&out));
    let answered = good.log().len() + bad.log().len();
    assert_eq!(answered, 6);
    judge_srv.accept_any_key();
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_out(&out)["status"], "complete");
    assert_eq!(good.log().len() + bad.log().len(), answered, "the answers are not asked again");
    assert!(result(&json_out(&out), "good", "arith", "judge-single")["value"].is_number());
}

/// Judge calls that fail leave answers unjudged: the run is errored (exit 1, a note saying so), and
/// --resume asks the judge again (the run read as complete with the judge's rows gone).
#[test]
fn failed_judge_calls_error_the_run_and_resume_retries_them() {
    let good = FakeServer::start(crate::server::arith_answer);
    let judge_srv = FakeServer::start(|_| "Rating: [[8]]".into());
    judge_srv.set_faults(|_, _| crate::server::Fault::ServerError);
    let dir = TempDir::new("judge-fails");
    dir.write("data/arith.jsonl", &arith_rows(3).replace("}\n", ", \"human\": \"\"}\n"));
    let metrics = r#"[{ judge = "single", model = "judge" }]"#;
    let text = suite(&good.base_url(), &good.base_url(), &judge_srv.base_url(), metrics).replace("model = \"j\"", "model = \"j\"\nmax-retries = 0");
    let s = dir.write("suite.toml", &text);
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json_out(&out)["status"], "errored");
    assert!(stderr(&out).contains("6 call(s) of judge \"judge\" failed, so their answers are not judged") && stderr(&out).contains("--resume` retries them"), "{}", stderr(&out));
    // the judge's column is there, empty, its errors the answers left unjudged
    let v = json_out(&out);
    for model in ["good", "bad"] {
        let row = result(&v, model, "arith", "judge-single");
        assert_eq!((&row["value"], &row["n"], &row["errors"]), (&serde_json::Value::Null, &serde_json::json!(0), &serde_json::json!(3)), "{model}: {row}");
    }
    judge_srv.set_faults(|_, _| crate::server::Fault::None);
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json", "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(v["status"], "complete");
    assert_eq!(result(&v, "good", "arith", "judge-single")["value"], 8.0);
    assert_eq!(result(&v, "good", "arith", "judge-single")["errors"], 0);
    let show = json_out(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--json"]));
    assert!(!show["notes"].to_string().contains("not judged"), "a retried failure is not noted: {}", show["notes"]);
}

/// A pairwise judge failing on one prompt: the candidate's column counts that answer as an error
/// and scores the others; the baseline gets no column either way.
#[test]
fn a_failed_pairwise_judge_call_is_an_error_of_the_candidates_column() {
    let (good, bad, judge_srv) = servers();
    judge_srv.set_faults(|prompt, _| if prompt.contains("11+7") { crate::server::Fault::ServerError } else { crate::server::Fault::None });
    let dir = TempDir::new("judge-pair-fails");
    dir.write("data/arith.jsonl", &arith_rows(3).replace("}\n", ", \"human\": \"\"}\n"));
    let metrics = r#"[{ judge = "pairwise", model = "judge", baseline = "bad" }]"#;
    let text = suite(&good.base_url(), &bad.base_url(), &judge_srv.base_url(), metrics).replace("model = \"j\"", "model = \"j\"\nmax-retries = 0");
    let s = dir.write("suite.toml", &text);
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_out(&out);
    let row = result(&v, "good", "arith", "judge-pairwise-vs-bad");
    assert_eq!((&row["n"], &row["errors"]), (&serde_json::json!(2), &serde_json::json!(1)), "{row}");
    assert!(v["results"].as_array().unwrap().iter().all(|r| !(r["model"] == "bad" && r["metric"] == "judge-pairwise-vs-bad")), "{v}");
}

#[test]
fn custom_judge_file_next_to_the_suite() {
    let good = FakeServer::start(crate::server::arith_answer);
    let judge_srv = FakeServer::start(|p| if p.starts_with("GRADE") { "1\nBecause.".into() } else { "?".into() });
    let dir = TempDir::new("custom-judge");
    dir.write("data/arith.jsonl", &arith_rows(3).replace("}\n", ", \"human\": \"tie\"}\n"));
    dir.write("judges/terse.toml", "name = \"terse\"\nkind = \"pandalm\"\nprompt = \"GRADE {{ question }} | {{ answer_a }} | {{ answer_b }}\"\n");
    let metrics = r#"[{ judge = "terse", model = "judge", mode = "all-pairs" }]"#;
    let s = dir.write("suite.toml", &suite(&good.base_url(), &good.base_url(), &judge_srv.base_url(), metrics));
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    // PandaLM verdict "1" in both orders: always the first slot, so every pair is inconsistent.
    assert_eq!(result(&v, "judge:judge", "arith", "judge-terse-all-pairs:position-consistency")["value"], 0.0);
    assert_eq!(result(&v, "judge:judge", "arith", "judge-terse-all-pairs:position-bias")["value"], 1.0);
    assert_eq!(result(&v, "good", "arith", "judge-terse-all-pairs")["value"], 0.5);
    assert_eq!(result(&v, "bad", "arith", "judge-terse-all-pairs")["value"], 0.5);
    // The template is part of the suite's identity: edited, a run is not resumed with it.
    let hash = |out: &std::process::Output| json_out(out)["suite_hash"].as_str().unwrap().to_string();
    let show = || llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--json"]);
    let before = hash(&show());
    dir.write("judges/terse.toml", "name = \"terse\"\nkind = \"pandalm\"\nprompt = \"GRADE! {{ question }} | {{ answer_a }} | {{ answer_b }}\"\n");
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(hash(&show()), before, "the edited judge template changes the suite hash");
    // A variable the judge phase does not give is an error before any model is asked, naming it.
    dir.write("judges/terse.toml", "name = \"terse\"\nkind = \"pandalm\"\nprompt = \"GRADE {{ question }} | {{ answer_1 }} | {{ answer_b }}\"\n");
    let before = good.answered();
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--no-cache"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("terse.toml") && e.contains("unknown variable(s) answer_1 (did you mean `answer_a`?); a pandalm judge's template can use question, answer_a, answer_b, reference, input"), "{e}");
    assert_eq!(good.answered(), before, "no model was asked");
}

#[test]
fn capabilities_suite_runs_offline_with_the_built_in_model_as_judge() {
    crate::engine_ref::model_path();
    let dir = TempDir::new("capabilities");
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/capabilities.toml");
    let out = llmeval(&["run", suite, "--db", dir.db().to_str().unwrap(), "--json", "--limit", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    // Every judge call was made and recorded, parsed or not (a 135M judge rarely follows the format).
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let (n, with_raw): (i64, i64) = conn.query_row("SELECT count(*), sum(raw IS NOT NULL) FROM judgments", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((n, with_raw), (4, 4));
    let failures = result(&v, "judge:smollm2-135m", "open-questions", "judge-single:parse-failure-rate");
    assert_eq!(failures["n"], 2);
    assert!(failures["value"].as_f64().unwrap() <= 1.0);
    assert!(result(&v, "smollm2-135m", "open-questions", "distinct-1")["value"].as_f64().unwrap() > 0.0);
}

#[test]
fn multi_turn_answers_use_the_models_own_history_and_are_judged_per_turn() {
    let model = FakeServer::start(|p| if p.starts_with("Q: ") { crate::server::arith_answer(p) } else { " plus ten is more.".into() });
    // The judge rates first turns 8 and second turns 4.
    let judge_srv = FakeServer::start(|p| if p.contains("Add ten") { "Rating: [[4]]".into() } else { "Rating: [[8]]".into() });
    let dir = TempDir::new("multiturn");
    let mut rows = String::new();
    for i in 0..5 {
        rows.push_str(&serde_json::json!({"turns": [format!("Q: {i}+1"), "Add ten to your answer."]}).to_string());
        rows.push('\n');
    }
    dir.write("data/mt.jsonl", &rows);
    let suite = format!(
        r#"name = "mt"
{}{}{}[[task]]
name = "conv"
kind = "generate"
data = "data/mt.jsonl"
turns = "turns"
prompt = "{{{{ turn }}}}"
metrics = [{{ judge = "single", model = "judge" }}, {{ judge = "pairwise", model = "judge", mode = "all-pairs" }}]
"#,
        remote_model("m", &model.base_url(), "m", ""),
        remote_model("m2", &model.base_url(), "m2", ""),
        remote_model("judge", &judge_srv.base_url(), "j", "evaluate = false"),
    );
    let s = dir.write("suite.toml", &suite);
    let out = llmeval(&["run", s.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(result(&v, "m", "conv", "judge-single")["value"], 8.0);
    assert_eq!(result(&v, "m", "conv/turn-2", "judge-single")["value"], 4.0);
    assert_eq!(result(&v, "m", "conv/turn-2", "judge-single")["n"], 5);
    // Second-turn requests carry the first turn and the model's own first answer.
    let log = model.log();
    assert_eq!(log.len(), 20, "two models, five conversations, two turns");
    for r in log.iter().filter(|r| r.key.starts_with("Add ten")) {
        let msgs = r.body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0]["role"], "user");
        assert!(msgs[0]["content"].as_str().unwrap().starts_with("Q: "));
        assert_eq!(msgs[1]["role"], "assistant");
        let q = msgs[0]["content"].as_str().unwrap();
        assert_eq!(msgs[1]["content"].as_str().unwrap(), crate::server::arith_answer(q));
    }
    // The second turn is judged with the conversation before it.
    let judged: Vec<String> = judge_srv.log().iter().map(|r| r.key.clone()).collect();
    let second: Vec<&String> = judged.iter().filter(|k| k.contains("Add ten") && k.contains("[The assistant's answer]")).collect();
    assert_eq!(second.len(), 10);
    assert!(second.iter().all(|k| k.contains("[Turn 1] User: Q: ") && k.contains("[Turn 1] Assistant: ") && k.contains("[Turn 2] User: Add ten")), "{}", second[0]);
    // Pairwise, second turn: both assistants' conversations, in both orders.
    let pairs: Vec<&String> = judged.iter().filter(|k| k.contains("[Assistant A's answer]") && k.contains("turn 2")).collect();
    assert_eq!(pairs.len(), 10);
    assert!(pairs.iter().all(|k| k.matches("[Turn 1] Assistant: ").count() == 2), "{}", pairs[0]);
}
