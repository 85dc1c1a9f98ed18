//! Kill -9 in the middle of a run, resume, and get what an uninterrupted run gets.

use crate::server::{FakeServer, Fault};
use crate::support::*;
use std::collections::HashSet;
use std::time::Duration;

fn finished_prompts(db: &std::path::Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT prompt FROM samples WHERE error IS NULL").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn sigkill_then_resume_equals_an_uninterrupted_run() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_latency(Duration::from_millis(15));
    let dir = TempDir::new("resume");
    dir.write("data/arith.jsonl", &arith_rows(400));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 4"));
    let db = dir.db();
    let mut child = spawn_until(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json"], std::process::Stdio::null(), || server.answered(), 120);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = finished_prompts(&db);
    assert!(done.len() >= 100 && done.len() < 400, "{} finished before the kill", done.len());

    let list = json_out(&llmeval(&["runs", "list", "--db", db.to_str().unwrap(), "--json"]));
    assert_eq!(list[0]["status"], "interrupted", "a killed run is unfinished, and no process works on it");
    let shown = stdout(&llmeval(&["runs", "show", "latest", "--db", db.to_str().unwrap()]));
    assert!(shown.contains("· interrupted\n") && shown.contains("--resume` continues it"), "{shown}");

    server.clear_log();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let resumed = json_out(&out);
    assert_eq!(resumed["run_id"], list[0]["run_id"], "the same run continues");
    let requested: Vec<String> = server.log().iter().map(|r| r.key.clone()).collect();
    for p in &requested {
        assert!(!done.contains(p), "finished item requested again: {p:?}");
    }
    assert_eq!(requested.iter().collect::<HashSet<_>>().len(), requested.len(), "no request doubled");
    // an answer cached just before the kill, whose sample was not yet written, is served from the
    // cache: one at most, as both writes happen in the same callback
    let left = 400 - done.len();
    assert!(requested.len() == left || requested.len() + 1 == left, "{} requested, {left} unfinished", requested.len());

    // An uninterrupted run, in another database, gives identical aggregates.
    let other = dir.path().join("other.db");
    let full = json_out(&llmeval(&["run", suite.to_str().unwrap(), "--db", other.to_str().unwrap(), "--json"]));
    assert_eq!(resumed["results"], full["results"]);
    assert_eq!(result(&full, "remote-x", "arith", "exact-match")["n"], 400);

    // Nothing left to resume.
    let again = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--resume"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("nothing to resume"), "{}", stderr(&again));
}

#[test]
fn resume_retries_the_errored_items_of_a_finished_run() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_faults(|prompt, _| if prompt.contains("Q: 11+7") { Fault::ServerError } else { Fault::None });
    let dir = TempDir::new("resume-errored");
    dir.write("data/arith.jsonl", &arith_rows(20));
    let text = arith_suite(&server.base_url(), "max-retries = 0").replace("model = \"served-model-name\"", "model = \"${LLMEVAL_TEST_RESUME_MODEL:-served-model-name}\"");
    let suite = dir.write("suite.toml", &text);
    let db = dir.db();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let first = json_out(&out);
    assert!(stderr(&out).contains("--resume` retries them"), "{}", stderr(&out));
    server.set_faults(|_, _| Fault::None);
    server.clear_log();
    // the model's name on the server comes from a variable that changed: resuming would mix two
    // models' answers in one run, so it is refused, naming the model, the key and both values
    let out = std::process::Command::new(BIN)
        .args(["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--resume"])
        .env("LLMEVAL_TEST_RESUME_MODEL", "other-model")
        .env_remove("LLMEVAL_DB")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("model \"remote-x\": model is now \"other-model\" but was \"served-model-name\" when run"), "{}", stderr(&out));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let resumed = json_out(&out);
    assert_eq!(resumed["run_id"], first["run_id"], "the same run continues");
    assert_eq!(resumed["status"], "complete");
    let asked: Vec<String> = server.log().iter().map(|r| r.key.clone()).collect();
    assert!(asked.len() == 1 && asked[0].contains("Q: 11+7"), "only the errored item is asked again: {asked:?}");
    assert_eq!(result(&resumed, "remote-x", "arith", "exact-match")["n"], 20);
}

#[test]
fn ctrl_c_says_how_to_resume_and_exits_130() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_latency(Duration::from_millis(15));
    let dir = TempDir::new("sigint");
    dir.write("data/arith.jsonl", &arith_rows(200));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 2"));
    let db = dir.db();
    let child = spawn_until(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap()], std::process::Stdio::piped(), || server.answered(), 20);
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted: every finished item is stored in") && err.contains("--resume` continues"), "{err}");
    assert!(!finished_prompts(&db).is_empty());
}

#[test]
fn resume_refuses_a_changed_suite() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_latency(Duration::from_millis(20));
    let dir = TempDir::new("resume-changed");
    dir.write("data/arith.jsonl", &arith_rows(200));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 2"));
    let db = dir.db();
    let mut child = std::process::Command::new(BIN)
        .args(["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while server.answered() < 10 {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    dir.write("data/arith.jsonl", &arith_rows(201));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("changed since run"), "{}", stderr(&out));
}

#[test]
fn a_run_stopped_by_an_error_says_so_and_resumes() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("resume-stopped");
    dir.write("data/arith.jsonl", &arith_rows(6));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let db = dir.db();
    let args = ["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--no-cache"];
    assert_eq!(llmeval(&args).status.code(), Some(0));
    // the database refuses the aggregates: every answer is in, then the run stops
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TRIGGER full BEFORE INSERT ON aggregates BEGIN SELECT RAISE(ABORT, 'disk full'); END;").unwrap();
    let out = llmeval(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("stopped; its finished items are stored, and `llmeval run") && e.contains("--resume` continues once the cause is fixed") && e.contains("disk full"), "{e}");
    let list = json_out(&llmeval(&["runs", "list", "--db", db.to_str().unwrap(), "--json"]));
    assert_eq!(list[0]["status"], "interrupted", "a stopped run is unfinished");
    let shown = stdout(&llmeval(&["runs", "show", list[0]["run_id"].as_str().unwrap(), "--db", db.to_str().unwrap()]));
    assert!(shown.contains("stopped by an error:") && shown.contains("disk full"), "{shown}");
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM samples WHERE error IS NULL", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 12, "both runs' answers are stored");

    conn.execute_batch("DROP TRIGGER full;").unwrap();
    server.clear_log();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", db.to_str().unwrap(), "--json", "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.log().len(), 0, "every answer was kept");
    let resumed = json_out(&out);
    assert_eq!(resumed["run_id"], list[0]["run_id"]);
    assert_eq!(result(&resumed, "remote-x", "arith", "exact-match")["n"], 6);
    assert!(!stdout(&llmeval(&["runs", "show", list[0]["run_id"].as_str().unwrap(), "--db", db.to_str().unwrap()])).contains("stopped by an error"), "the note goes once it resumed");
}

#[test]
fn a_run_in_progress_is_not_resumed_by_a_second_process() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_latency(Duration::from_millis(100));
    let dir = TempDir::new("resume-twice");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 1"));
    let db = dir.db();
    let (suite, db) = (suite.to_str().unwrap(), db.to_str().unwrap());
    let mut child = spawn_until(&["run", suite, "--db", db], std::process::Stdio::null(), || server.answered(), 2);
    let list = json_out(&llmeval(&["runs", "list", "--db", db, "--json"]));
    assert_eq!(list[0]["status"], "running", "a process is working on it");
    // while the first process works, a second one resuming the run would ask its questions again
    let twice = llmeval(&["run", suite, "--db", db, "--resume"]);
    assert_eq!(twice.status.code(), Some(2), "{}", stderr(&twice));
    let want = format!("is in progress in another llmeval process (pid {} on ", child.id());
    assert!(stderr(&twice).contains(&want), "{}", stderr(&twice));
    // once that process is gone (killed: it could not release its claim), the run resumes
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(json_out(&llmeval(&["runs", "list", "--db", db, "--json"]))[0]["status"], "interrupted");
    let out = llmeval(&["run", suite, "--db", db, "--json", "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(result(&json_out(&out), "remote-x", "arith", "exact-match")["n"], 40);
}
