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
fn cli_ratings_json_and_table() {
    let out = llmeval(&["arena", "ratings", "--battles", battles_path(), "--method", "bt", "--bootstrap", "100", "--seed", "3", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_out(&out);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["battles", "ci95", "method", "rank", "ratings"]);
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
