//! Transient and permanent faults: retries, errored items, exit codes, the concurrency cap.

use crate::server::{FakeServer, Fault};
use crate::support::*;
use std::time::Duration;

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3))
}

#[test]
fn transient_faults_all_recover_with_the_same_scores() {
    let server = FakeServer::start(crate::server::arith_answer);
    // Every prompt fails on its first attempt or two, in one of six ways.
    server.set_faults(|prompt, attempt| {
        let h = fnv(prompt);
        let fails = (h % 3) as usize; // 0, 1 or 2 failed attempts
        if attempt >= fails {
            return Fault::None;
        }
        match (h / 3 + attempt as u64) % 6 {
            0 => Fault::RateLimited("0.05".into()),
            1 => Fault::ServerError,
            2 => Fault::Drop,
            3 => Fault::NotJson,
            4 => Fault::Slow(Duration::from_millis(1500)),
            _ => Fault::RateLimited("0".into()),
        }
    });
    let dir = TempDir::new("transient");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 8\ntimeout-s = 0.5\nretry-initial-s = 0.01"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let r = result(&v, "remote-x", "arith", "exact-match");
    assert_eq!(r["n"], 40);
    assert_eq!(r["errors"], 0);
    assert!((r["value"].as_f64().unwrap() - arith_expected(40)).abs() < 1e-12);
    let log = server.log();
    assert!(log.len() > 40, "faults caused retries");
    // Every retry of a sample is counted on the sample.
    let show = json_out(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--samples", "--json"]));
    let attempts: i64 = show["samples"].as_array().unwrap().iter().map(|s| s["attempts"].as_i64().unwrap()).sum();
    assert_eq!(attempts as usize, log.len());
}

#[test]
fn retry_after_is_honoured() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_faults(|_, attempt| if attempt == 0 { Fault::RateLimited("1".into()) } else { Fault::None });
    let dir = TempDir::new("retryafter");
    dir.write("data/arith.jsonl", &arith_rows(2));
    // retry-initial-s is tiny, so only Retry-After can explain a one-second wait.
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "retry-initial-s = 0.001"));
    let t = std::time::Instant::now();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(t.elapsed() >= Duration::from_millis(950), "waited {:?}", t.elapsed());
    assert_eq!(server.log().len(), 4);
}

#[test]
fn a_retry_after_too_long_to_wait_errors_the_item_at_once() {
    let server = FakeServer::start(crate::server::arith_answer);
    // the second asks for more seconds than a Duration holds (it crashed a worker, and the run
    // read as complete with the item missing)
    server.set_faults(|prompt, _| match prompt {
        p if p.contains("Q: 11+7") => Fault::RateLimited("86400".into()),
        p if p.contains("Q: 48+60") => Fault::RateLimited("99999999999999999999".into()),
        _ => Fault::None,
    });
    let dir = TempDir::new("retryafter-long");
    dir.write("data/arith.jsonl", &arith_rows(20));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let t = std::time::Instant::now();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(60), "waited {:?}", t.elapsed());
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let errs = sample_errors(&dir.db());
    assert_eq!(errs.len(), 2);
    assert!(errs.iter().any(|e| e.contains("HTTP 429") && e.contains("the server asked to wait 86400 s before retrying, more than llmeval waits: 300 s")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("HTTP 429") && e.contains("more than llmeval waits")), "{errs:?}");
    let r = &json_out(&out)["results"][0];
    assert_eq!((r["n"].as_i64(), r["errors"].as_i64()), (Some(18), Some(2)), "every item is in the run: {r}");
}

#[test]
fn an_answer_without_text_is_errored_and_not_cached() {
    let server = FakeServer::start(crate::server::arith_answer);
    let null = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}]}"#;
    server.set_faults(move |prompt, _| if prompt.contains("Q: 11+7") { Fault::Body(null.into()) } else { Fault::None });
    let dir = TempDir::new("nullcontent");
    dir.write("data/arith.jsonl", &arith_rows(20));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let run = || llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json_out(&out);
    let r = result(&v, "remote-x", "arith", "exact-match");
    assert_eq!((r["errors"].as_u64(), r["n"].as_u64()), (Some(1), Some(19)), "{r}");
    let errs = sample_errors(&dir.db());
    assert_eq!(errs, ["the response has no answer text: message.content is null (finish_reason \"content_filter\")"]);
    // once the server answers, the item is asked again (nothing was cached) and scored
    server.set_faults(|_, _| Fault::None);
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(result(&json_out(&out), "remote-x", "arith", "exact-match")["n"], 20);
    assert!(server.log().iter().filter(|r| r.key.contains("Q: 11+7")).count() >= 2);
}

#[test]
fn permanent_faults_are_errored_not_wrong() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_faults(|prompt, _| {
        if prompt.contains("Q: 11+7") {
            Fault::ServerError
        } else if prompt.contains("Q: 48+60") {
            Fault::BadRequest
        } else {
            Fault::None
        }
    });
    let dir = TempDir::new("permanent");
    dir.write("data/arith.jsonl", &arith_rows(20));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "max-retries = 2\nretry-initial-s = 0.01"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "errored items give exit code 1: {}", stderr(&out));
    // two errors, each once: the summary names the first item's
    assert!(stderr(&out).contains("2 item(s) errored and were not scored (1 of them: HTTP 500: boom (gave up after 3 attempts))"), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(v["status"], "errored");
    let r = result(&v, "remote-x", "arith", "exact-match");
    assert_eq!(r["errors"], 2);
    assert_eq!(r["n"], 18, "errored items are not scored");
    // 500: 1 + 2 retries; 400: no retry.
    let log = server.log();
    assert_eq!(log.iter().filter(|r| r.key.contains("Q: 11+7")).count(), 3);
    assert_eq!(log.iter().filter(|r| r.key.contains("Q: 48+60")).count(), 1);
    let errs = sample_errors(&dir.db());
    assert_eq!(errs.len(), 2);
    assert!(errs.iter().any(|e| e.contains("HTTP 500") && e.contains("3 attempts")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("HTTP 400") && e.contains("this model does not exist")), "{errs:?}");

    // --allow-errors accepts the same outcome.
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json", "--allow-errors"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn unreachable_server_errors_every_item() {
    // A port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TempDir::new("unreachable");
    dir.write("data/arith.jsonl", &arith_rows(3));
    let suite = dir.write("suite.toml", &arith_suite(&format!("http://127.0.0.1:{port}/v1"), "max-retries = 1\nretry-initial-s = 0.01"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(result(&json_out(&out), "remote-x", "arith", "exact-match")["errors"], 3);
    assert!(stderr(&out).contains("3 item(s) errored and were not scored (all with the error: cannot connect"), "{}", stderr(&out));
}

/// A server that fails every request stops the run once `concurrency` requests in a row have given
/// up, instead of retrying each of the remaining items; `--resume` finishes the run once it is up.
#[test]
fn a_failing_endpoint_stops_the_run_and_resume_finishes_it() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_faults(|_, _| Fault::ServerError);
    let dir = TempDir::new("endpoint-down");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 4
max-retries = 1
retry-initial-s = 0.01"));
    let (s, db) = (suite.to_str().unwrap(), dir.db());
    let out = llmeval(&["run", s, "--db", db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("answered none of the last 4 requests") && err.contains("HTTP 500: boom (gave up after 2 attempts)"), "{err}");
    assert!(err.contains(&format!("`llmeval run {s} --db {} --resume` continues once the cause is fixed", db.display())), "the command that continues it, with its --db: {err}");
    // the four that gave up, and at most the three others in flight then, each tried twice
    let asked = server.log().len();
    assert!((8..=14).contains(&asked), "{asked} requests");
    let list = stdout(&llmeval(&["runs", "list", "--db", db.to_str().unwrap()]));
    assert!(list.contains("interrupted"), "{list}");

    server.set_faults(|_, _| Fault::None);
    let out = llmeval(&["run", s, "--db", db.to_str().unwrap(), "--resume", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    assert_eq!(v["status"], "complete");
    let r = result(&v, "remote-x", "arith", "exact-match");
    assert_eq!((r["n"].as_u64(), r["errors"].as_u64()), (Some(40), Some(0)));
    assert!((r["value"].as_f64().unwrap() - arith_expected(40)).abs() < 1e-12);
}

/// Nothing listening: at concurrency 1 the run stops after three requests have given up (one item a
/// server cannot answer must not stop a run).
#[test]
fn an_unreachable_endpoint_stops_the_run_after_three_give_ups() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TempDir::new("unreachable-stop");
    dir.write("data/arith.jsonl", &arith_rows(30));
    let suite = dir.write("suite.toml", &arith_suite(&format!("http://127.0.0.1:{port}/v1"), "concurrency = 1
max-retries = 1
retry-initial-s = 0.01"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("answered none of the last 3 requests") && stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    // the first two gave up and errored; the third halted the model and stays unasked
    assert_eq!(sample_errors(&dir.db()).len(), 2);
}

/// A key the server rejects stops the run at the first answer: every request would get the same.
#[test]
fn a_rejected_key_stops_the_run_at_once() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.require_key("sk-right");
    let dir = TempDir::new("rejected-key");
    dir.write("data/arith.jsonl", &arith_rows(40));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 2
api-key-env = \"LLMEVAL_TEST_WRONG_KEY\""));
    let out = std::process::Command::new(BIN)
        .args(["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()])
        .env("LLMEVAL_TEST_WRONG_KEY", "sk-wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rejects every request") && stderr(&out).contains("HTTP 401: bad key (check the API key"), "{}", stderr(&out));
    assert!(server.log().len() <= 2, "only the requests in flight were made: {}", server.log().len());
    assert!(sample_errors(&dir.db()).is_empty(), "no item is stored as errored");
}

#[test]
fn concurrency_cap_is_never_exceeded() {
    let server = FakeServer::start(crate::server::arith_answer);
    server.set_latency(Duration::from_millis(30));
    let dir = TempDir::new("cap");
    dir.write("data/arith.jsonl", &arith_rows(60));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 5"));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.max_in_flight(), 5, "the cap is reached and never exceeded");
}

#[test]
fn requests_per_minute_limit_spaces_requests() {
    let server = FakeServer::start(crate::server::arith_answer);
    let dir = TempDir::new("rpm");
    dir.write("data/arith.jsonl", &arith_rows(6));
    // 600 per minute = one every 100 ms: 6 requests take at least 500 ms.
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "concurrency = 6\nrequests-per-minute = 600"));
    let t = std::time::Instant::now();
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(t.elapsed() >= Duration::from_millis(490), "{:?}", t.elapsed());
}

/// An answer the length limit ended may be cut off: the run says how many, per task and model.
#[test]
fn answers_ended_by_max_tokens_are_noted() {
    let server = FakeServer::start(crate::server::arith_answer);
    let cut = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"The sum of 11 and"},"finish_reason":"length"}]}"#;
    server.set_faults(move |prompt, _| if prompt.contains("Q: 11+7") { Fault::Body(cut.into()) } else { Fault::None });
    let dir = TempDir::new("cut-off");
    dir.write("data/arith.jsonl", &arith_rows(5));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("task \"arith\", model \"remote-x\": 1 answer(s) ended at max-tokens = 8 (finish_reason \"length\")"), "{}", stderr(&out));
}

/// A server that ignores max_tokens sends longer answers than the task allows: the run says so.
#[test]
fn answers_longer_than_max_tokens_are_noted() {
    let server = FakeServer::start(crate::server::arith_answer);
    let long = |n: u64| format!(r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"18, as a long story"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":9,"completion_tokens":{n}}}}}"#);
    server.set_faults(move |prompt, _| match () {
        _ if prompt.contains("Q: 11+7") => Fault::Body(long(300)),
        _ if prompt.contains("Q: 48+60") => Fault::Body(long(40)),
        _ if prompt.contains("Q: 85+113") => Fault::Body(long(8)),
        _ => Fault::None,
    });
    let dir = TempDir::new("too-long");
    dir.write("data/arith.jsonl", &arith_rows(5));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let want = "task \"arith\", model \"remote-x\": 2 answer(s) are longer than max-tokens = 8 (up to 300 tokens by the server's count): the server does not honour max_tokens";
    assert!(stderr(&out).contains(want), "{}", stderr(&out));
    let run = json_out(&llmeval(&["runs", "show", "latest", "--db", dir.db().to_str().unwrap(), "--json"]));
    assert!(run["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains(want)), "{run}");
}

/// A hosted model that refuses `max_tokens`: the error says which setting sends
/// `max_completion_tokens` instead, and with it the run goes through.
#[test]
fn max_tokens_field_sends_max_completion_tokens() {
    let server = FakeServer::start(crate::server::arith_answer);
    let refusal = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.";
    server.set_faults(move |_, _| Fault::Refused(refusal.into()));
    let dir = TempDir::new("max-completion-tokens");
    dir.write("data/arith.jsonl", &arith_rows(3));
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), ""));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let errors = sample_errors(&dir.db());
    assert!(errors.iter().all(|e| e.contains("set max-tokens-field = \"max_completion_tokens\" on the model")), "{errors:?}");
    server.set_faults(|_, _| Fault::None);
    server.clear_log();
    let suite = dir.write("suite.toml", &arith_suite(&server.base_url(), "max-tokens-field = \"max_completion_tokens\""));
    let out = llmeval(&["run", suite.to_str().unwrap(), "--db", dir.db().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = server.log();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.body["max_completion_tokens"] == 8 && r.body.get("max_tokens").is_none()), "{:?}", log[0].body);
    // a builtin model has no request to put it in
    let text = "[[model]]\nname = \"m\"\nengine = \"builtin\"\npath = \"x.gguf\"\nmax-tokens-field = \"max_completion_tokens\"\n";
    let bad = dir.write("bad.toml", &format!("name = \"b\"\n{text}[[task]]\nname = \"t\"\nkind = \"generate\"\ndata = \"data/arith.jsonl\"\nprompt = \"{{{{ question }}}}\"\ntarget = \"{{{{ answer }}}}\"\n"));
    let out = llmeval(&["run", bad.to_str().unwrap(), "--db", dir.db().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max-tokens-field are for engine = \"openai\""), "{}", stderr(&out));
}
