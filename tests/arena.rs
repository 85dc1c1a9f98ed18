//! Arena ratings against FastChat's (tests/goldens/make_arena_goldens.py), the CLI forms, and
//! battles read back from judged pairs in the store.

use crate::support::*;
use llmeval::arena::{self, Method};
use serde_json::Value;

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/arena_ratings.json")).unwrap()).unwrap()
}

fn battles_path() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/battles.jsonl")
}

#[test]
fn elo_and_bradley_terry_equal_fastchat() {
    let g = golden();
    let battles = arena::read_battles(std::path::Path::new(battles_path())).unwrap();
    assert_eq!(battles.len(), 3000);
    for (name, want) in g["elo"].as_object().unwrap() {
        let got = arena::elo(&battles, 4.0)[name];
        assert!((got - want.as_f64().unwrap()).abs() < 1e-9, "elo {name}: {got} vs FastChat {want}");
    }
    let bt = arena::bradley_terry(&battles);
    for (name, want) in g["bt"].as_object().unwrap() {
        assert!((bt[name] - want.as_f64().unwrap()).abs() < 1e-3, "bt {name}: {} vs FastChat {want}", bt[name]);
    }
    assert!(bt.values().map(|r| (r - 1000.0) / 400.0).sum::<f64>().abs() < 1e-9, "θ sums to zero");
}

#[test]
fn cli_ratings_refuse_a_k_or_anchor_that_is_not_a_finite_number() {
    for args in [["--k", "nan"], ["--k", "inf"], ["--anchor", "alpha=nan"], ["--anchor", "alpha=1e400"]] {
        let mut all = vec!["arena", "ratings", "--battles", battles_path(), "--method", "elo"];
        all.extend_from_slice(&args);
        let out = llmeval(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(args[0]) && stderr(&out).contains("finite"), "{args:?}: {}", stderr(&out));
    }
    let dir = TempDir::new("arena-empty");
    let empty = dir.write("none.jsonl", "\n");
    let out = llmeval(&["arena", "ratings", "--battles", empty.to_str().unwrap(), "--method", "elo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("none.jsonl: no battles in the file"), "{}", stderr(&out));
}

#[test]
fn cli_ratings_json_and_table() {
    let out = llmeval(&["arena", "ratings", "--battles", battles_path(), "--method", "bt", "--bootstrap", "100", "--seed", "3", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["battles", "ci95", "method", "notes", "rank", "ratings"]);
    assert_eq!(v["notes"], serde_json::json!([]));
    assert_eq!(v["battles"], 3000);
    assert_eq!(v["rank"]["alpha"], 1);
    let ci = v["ci95"]["alpha"].as_array().unwrap();
    let r = v["ratings"]["alpha"].as_f64().unwrap();
    assert!(ci[0].as_f64().unwrap() < r && r < ci[1].as_f64().unwrap());
    // Seeded: the same command gives the same intervals.
    let again = json_out(&llmeval(&["arena", "ratings", "--battles", battles_path(), "--method", "bt", "--bootstrap", "100", "--seed", "3", "--json"]));
    assert_eq!(v, again);
    // Ranks follow FastChat: 1 + models whose lower bound is above this upper bound.
    let cis = v["ci95"].as_object().unwrap();
    for (m, c) in cis {
        let hi = c[1].as_f64().unwrap();
        let above = cis.iter().filter(|(o, oc)| *o != m && oc[0].as_f64().unwrap() > hi).count();
        assert_eq!(v["rank"][m], above + 1, "{m}");
    }
    let anchored = json_out(&llmeval(&["arena", "ratings", "--battles", battles_path(), "--method", "elo", "--anchor", "delta=800", "--json"]));
    assert_eq!(anchored["ratings"]["delta"], 800.0);
    let table = llmeval(&["arena", "ratings", "--battles", battles_path(), "--method", "elo"]);
    let text = stdout(&table);
    assert!(text.contains("observed win rate") && text.contains("predicted win rate") && text.contains("alpha"), "{text}");
}

#[test]
fn bad_battle_logs_name_the_line() {
    let dir = TempDir::new("battles");
    let f = dir.write("b.jsonl", "{\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"model_a\"}\n{\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"x\"}\n");
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("b.jsonl:2") && stderr(&out).contains("unknown winner \"x\""), "{}", stderr(&out));
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo", "--anchor", "nope=1"]);
    assert_eq!(out.status.code(), Some(2));
    // a JSON array names the line its bad element starts on
    let f = dir.write("b.json", "[\n {\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"model_a\"},\n\n {\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"x\"}\n]");
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo"]);
    assert!(stderr(&out).contains("b.json:4") && stderr(&out).contains("unknown winner \"x\""), "{}", stderr(&out));
    // a winner named twice would silently keep the last; a JSON array that holds no battles
    let f = dir.write("d.jsonl", "{\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"model_a\", \"winner\": \"model_b\"}\n");
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("d.jsonl:1") && stderr(&out).contains("the key \"winner\" appears twice"), "{}", stderr(&out));
    let f = dir.write("e.json", "[1]");
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo"]);
    assert!(stderr(&out).contains("e.json:1") && stderr(&out).contains("battle has no string field `model_a`"), "{}", stderr(&out));
    // a BOM is read past; a self-battle changes nothing and is said
    let f = dir.write("c.jsonl", "\u{feff}{\"model_a\": \"x\", \"model_b\": \"x\", \"winner\": \"model_a\"}\n{\"model_a\": \"x\", \"model_b\": \"y\", \"winner\": \"tie\"}\n");
    let out = llmeval(&["arena", "ratings", "--battles", f.to_str().unwrap(), "--method", "elo", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 battle(s) pit a model against itself (x): they change no rating"), "{}", stderr(&out));
    assert_eq!(json_out(&out)["ratings"]["x"], 1000.0);
}

#[test]
fn elo_by_hand_from_fastchat_formula() {
    // Two battles, computed by hand with K = 4.
    let b = |a: &str, bb: &str, w: &str| arena::Battle { model_a: a.into(), model_b: bb.into(), winner: arena::Winner::parse(w).unwrap() };
    let r = arena::rate(&[b("x", "y", "model_a"), b("y", "x", "model_a")], Method::Elo, 4.0, 0, 0, None).unwrap();
    // After battle 1: x 1002, y 998. Battle 2: y (998) beats x (1002): e_y = 1/(1+10^(4/400)).
    let ey = 1.0 / (1.0 + 10f64.powf(4.0 / 400.0));
    assert!((r.ratings["y"] - (998.0 + 4.0 * (1.0 - ey))).abs() < 1e-12);
    assert!((r.ratings["x"] - (1002.0 - 4.0 * (1.0 - ey))).abs() < 1e-12);
}

/// An arena over loopback models and a judge that prefers the correct sum.
fn arena_files(dir: &TempDir, a: &str, b: &str, c: &str, judge: &str, per_pair: usize) -> std::path::PathBuf {
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = format!(
        "name = \"arena-models\"\n{}{}{}{}[[task]]\nname = \"arith\"\nkind = \"generate\"\ndata = \"data/arith.jsonl\"\nprompt = \"Q: {{{{ question }}}}\\nA:\"\ntarget = \"{{{{ answer }}}}\"\n",
        remote_model("good", a, "good", "concurrency = 2"),
        remote_model("bad", b, "bad", "concurrency = 2"),
        remote_model("worse", c, "worse", "concurrency = 2"),
        remote_model("judge", judge, "judge", "concurrency = 2\nevaluate = false"),
    );
    dir.write("suite.toml", &suite);
    dir.write(
        "arena.toml",
        &format!("name = \"t\"\nsuite = \"suite.toml\"\nmodels = [\"good\", \"bad\", \"worse\"]\njudge = {{ judge = \"pairwise\", model = \"judge\" }}\nbattles-per-pair = {per_pair}\nseed = 7\n"),
    )
}

/// Arena files that could never give a battle are errors naming the line (they ran to exit 0).
#[test]
fn arena_files_without_battles_are_errors_naming_the_line() {
    let dir = TempDir::new("arena-errors");
    let url = "http://127.0.0.1:9/v1";
    let arena = arena_files(&dir, url, url, url, url, 3);
    let text = std::fs::read_to_string(&arena).unwrap();
    for (changed, key, want) in [
        (text.replace("[\"good\", \"bad\", \"worse\"]", "[\"good\", \"good\"]"), "models", "model \"good\" is listed twice"),
        (text.replace("battles-per-pair = 3", "battles-per-pair = 0"), "battles-per-pair", "battles-per-pair = 0 gives no battle"),
        (text.replace("judge = \"pairwise\"", "judge = \"single\""), "judge", "rates one answer at a time"),
    ] {
        std::fs::write(&arena, &changed).unwrap();
        let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{want}: {}", stderr(&out));
        let line = changed.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        assert!(stderr(&out).contains(&format!("arena.toml:{line}: ")) && stderr(&out).contains(want), "{want}: {}", stderr(&out));
    }
}

fn correct_judge(p: &str) -> String {
    let right = sum_of(p).to_string();
    let between = |s: &str, e: &str| -> String {
        let i = p.find(s).map(|i| i + s.len()).unwrap_or(0);
        p[i..].split(e).next().unwrap_or("").to_string()
    };
    let a = between("[Assistant A's answer]", "[End of assistant A's answer]").trim().to_string();
    let b = between("[Assistant B's answer]", "[End of assistant B's answer]").trim().to_string();
    match (a == right, b == right) {
        (true, false) => "[[A]]".into(),
        (false, true) => "[[B]]".into(),
        _ => "[[C]]".into(),
    }
}

/// An arena whose judge rejects every request stops, saying how to continue it: `arena run` on
/// its arena file (not `run` on its suite, which would not find the arena's run).
#[test]
fn a_stopped_arena_says_arena_run_continues_it() {
    use crate::server::FakeServer;
    let good = FakeServer::start(|p| format!("{}", sum_of(p)));
    let judge = FakeServer::start(correct_judge);
    judge.require_key("sk-judge");
    let dir = TempDir::new("arena-stopped");
    let arena = arena_files(&dir, &good.base_url(), &good.base_url(), &good.base_url(), &judge.base_url(), 2);
    let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let want = format!("`llmeval arena run {} --db {}` continues once the cause is fixed", arena.display(), dir.db().display());
    assert!(stderr(&out).contains(&want) && stderr(&out).contains("rejects every request"), "{}", stderr(&out));
    let shown = stdout(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap()]));
    assert!(shown.contains("`llmeval arena run` on the arena file of arena \"t\" continues it"), "{shown}");
    judge.accept_any_key();
    let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn arena_run_samples_prompts_judges_every_pair_and_resumes() {
    use crate::server::FakeServer;
    use std::time::Duration;
    let good = FakeServer::start(|p| format!("{}", sum_of(p)));
    let bad = FakeServer::start(|p| format!("{}", sum_of(p) + 1));
    let worse = FakeServer::start(|p| format!("{}", sum_of(p) + 2));
    let judge = FakeServer::start(correct_judge);
    judge.set_latency(Duration::from_millis(20));
    let dir = TempDir::new("arena-run");
    let arena = arena_files(&dir, &good.base_url(), &bad.base_url(), &worse.base_url(), &judge.base_url(), 12);
    // Kill it part-way through the judging, then run it again: the same run resumes.
    let mut child = spawn_until(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()], std::process::Stdio::null(), || judge.answered(), 20);
    child.kill().unwrap();
    child.wait().unwrap();
    let first = judge.answered();
    judge.clear_log();
    let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // 3 pairs × 12 prompts × 2 orders = 72 judge calls in all; the resumed run made the rest.
    assert!(judge.log().len() <= 72 - first + 2 && judge.log().len() >= 72 - first - 2, "{} after {first}", judge.log().len());
    let runs = json_out(&llmeval(&["runs", "list", "--db", dir.db().to_str().unwrap(), "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 1, "resumed, not restarted");
    // Every pair gets 12 battles; ratings order the models by correctness.
    let r = json_out(&llmeval(&["arena", "ratings", "--db", dir.db().to_str().unwrap(), "--method", "bt", "--json"]));
    assert_eq!(r["battles"], 36);
    let rating = |m: &str| r["ratings"][m].as_f64().unwrap();
    assert!(rating("good") > rating("bad") && rating("bad") >= rating("worse") - 1e-9, "{r}");
    // Prompts are a seeded sample of the suite's items, the same for every pair.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let items: i64 = conn.query_row("SELECT count(DISTINCT item) FROM judgments", [], |x| x.get(0)).unwrap();
    assert_eq!(items, 12);
    // Interrupted, then edited: the next run starts anew and says so (it could never run again).
    let text = std::fs::read_to_string(&arena).unwrap();
    std::fs::write(&arena, text.replace("seed = 7", "seed = 8")).unwrap();
    let n = judge.answered();
    let mut child = spawn_until(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()], std::process::Stdio::null(), || judge.answered(), n + 10);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::write(&arena, text.replace("seed = 7", "seed = 9")).unwrap();
    let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("arena \"t\" or its suite changed since its unfinished run") && stderr(&out).contains("starting a new run"), "{}", stderr(&out));
    let runs = json_out(&llmeval(&["runs", "list", "--db", dir.db().to_str().unwrap(), "--json"]));
    let status: Vec<&str> = runs.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status.len(), 3, "{runs}");
    assert_eq!(status.iter().filter(|s| **s == "complete").count(), 2, "{runs}");
    // Ratings count the newest judged run of the arena, not the same battles once per run.
    let out = llmeval(&["arena", "ratings", "--db", dir.db().to_str().unwrap(), "--method", "bt", "--json"]);
    assert_eq!(json_out(&out)["battles"], 36, "{}", stderr(&out));
    assert!(stderr(&out).contains("battles from the newest judged run of each suite: ") && stderr(&out).contains("(arena:t)"), "{}", stderr(&out));
}

#[test]
fn human_votes_are_battles_and_agreement_with_the_judge_is_reported() {
    use crate::server::FakeServer;
    let good = FakeServer::start(|p| format!("{}", sum_of(p)));
    let bad = FakeServer::start(|p| format!("{}", sum_of(p) + 1));
    let worse = FakeServer::start(|p| format!("{}", sum_of(p) + 2));
    let judge = FakeServer::start(correct_judge);
    let dir = TempDir::new("arena-vote");
    let arena = arena_files(&dir, &good.base_url(), &bad.base_url(), &worse.base_url(), &judge.base_url(), 4);
    let out = llmeval(&["arena", "run", arena.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let store = llmeval::store::Store::open(&dir.db()).unwrap();
    let (run_id, pairs) = llmeval::arena::pairs_to_vote(&store, &arena, "ann").unwrap();
    assert_eq!(pairs.len(), 12, "3 pairs × 4 prompts");
    // Ann agrees with the (correct) judge on "good", and calls the other pairs ties.
    for p in &pairs {
        let vote = if p.first == "good" {
            llmeval::tui::vote::Vote::First
        } else if p.second == "good" {
            llmeval::tui::vote::Vote::Second
        } else {
            llmeval::tui::vote::Vote::BothBad
        };
        llmeval::tui::vote::store_vote(&store, &run_id, "ann", p, vote).unwrap();
    }
    assert!(llmeval::arena::pairs_to_vote(&store, &arena, "ann").unwrap().1.is_empty(), "voted pairs are not offered again");
    let out = llmeval(&["arena", "ratings", "--db", dir.db().to_str().unwrap(), "--method", "elo", "--json"]);
    assert_eq!(json_out(&out)["battles"], 24, "12 judged + 12 voted");
    // The same battles, FastChat-shaped, in the database.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM battles WHERE judge = 'human:ann' AND winner = 'tie (bothbad)' AND turn = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 4, "the bad-vs-worse pairs");
    let n: i64 = conn.query_row("SELECT count(*) FROM battles WHERE judge = 'judge' AND winner IN ('model_a', 'model_b')", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 8, "good beats the others on every prompt");
    assert!(stderr(&out).contains("judge vs human: agreement 1.000 (n=12)"), "{}", stderr(&out));

    // judge = "human": the arena only collects answers, for people to vote on.
    let human = dir.write("human.toml", &std::fs::read_to_string(&arena).unwrap().replace("judge = { judge = \"pairwise\", model = \"judge\" }", "judge = \"human\"").replace("name = \"t\"", "name = \"h\""));
    judge.clear_log();
    let out = llmeval(&["arena", "run", human.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(judge.log().is_empty(), "no model judge is called");
    assert_eq!(llmeval::arena::pairs_to_vote(&store, &human, "bob").unwrap().1.len(), 12);
}
