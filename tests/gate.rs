//! The regression gate on two real runs against loopback servers: a candidate that got worse on
//! many items fails with exit 1 and names the items; one that is the same passes; tolerances apply.

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
    assert_eq!(bleu["test"], "paired bootstrap (corpus)");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testcase classname=\"remote-x\" name=\"arith exact-match\">") && xml.contains("<failure"), "{xml}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("❌ regression") && md.contains("| remote-x | arith | exact-match |"), "{md}");

    // A generous tolerance accepts the same drop.
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "baseline", "--candidate", &cand, "--max-drop", "exact-match=0.9", "--max-drop", "bleu=100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // The baseline against itself passes.
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", &base, "--candidate", &base, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_out(&out)["verdict"], "pass");
    // Bad arguments are errors (exit 2).
    let out = llmeval(&["gate", "--db", db.to_str().unwrap(), "--baseline", "nope", "--candidate", "latest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no run or tag named \"nope\""), "{}", stderr(&out));
}
