//! Metrics against the reference packages' own numbers (tests/goldens, made by
//! tests/goldens/make_goldens.py with sacrebleu 2.6.0, rouge-score 0.1.2, nltk 3.10.4, jieba
//! 0.42.1, rouge_chinese 1.0.3): library calls and the `llmeval metrics` CLI.

use crate::support::*;
use llmeval::metric::rouge::{self, RougeType};
use llmeval::metric::sacrebleu::{self, BleuOptions, ChrfOptions, Smooth};
use serde_json::Value;
use std::path::PathBuf;

fn goldens() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/goldens.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn corpus(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/corpus")).join(name)
}

fn lines(name: &str) -> Vec<String> {
    llmeval::dataset::read_samples(&corpus(name), name.ends_with(".jsonl")).unwrap()
}

fn refs_of(c: &str, n: usize) -> Vec<Vec<String>> {
    (0..n).map(|k| lines(&format!("{c}.ref{k}"))).collect()
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: ours {a} vs reference {b}");
}

#[test]
fn bleu_equals_sacrebleu_for_every_tokenizer_and_option() {
    let g = goldens();
    for case in g["bleu"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let hyp = lines(&format!("{c}.hyp"));
        let refs = refs_of(c, case["refs"].as_u64().unwrap() as usize);
        let hyp: Vec<&str> = hyp.iter().map(String::as_str).collect();
        let refs: Vec<Vec<&str>> = refs.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let o = BleuOptions { tokenize: case["tokenize"].as_str().unwrap().parse().unwrap(), lowercase: case["lowercase"].as_bool().unwrap(), smooth: Smooth::Exp };
        let s = sacrebleu::corpus_bleu(&hyp, &refs, &o);
        let what = format!("{case}");
        close(s.score, case["score"].as_f64().unwrap(), 1e-4, &what);
        close(s.bp, case["bp"].as_f64().unwrap(), 1e-6, &what);
        assert_eq!(s.sys_len, case["sys_len"].as_u64().unwrap(), "{what}");
        assert_eq!(s.ref_len, case["ref_len"].as_u64().unwrap(), "{what}");
        for (p, q) in s.precisions.iter().zip(case["precisions"].as_array().unwrap()) {
            close(*p, q.as_f64().unwrap(), 1e-4, &what);
        }
    }
}

#[test]
fn bleu_smoothing_equals_sacrebleu() {
    let g = goldens();
    for case in g["bleu_smooth"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let smooth = Smooth::parse(case["smooth_method"].as_str().unwrap(), case["smooth_value"].as_f64()).unwrap();
        let o = BleuOptions { tokenize: case["tokenize"].as_str().unwrap().parse().unwrap(), lowercase: false, smooth };
        assert_eq!(o.signature(1), case["signature"].as_str().unwrap());
        let (hyp, r) = (lines(&format!("{c}.hyp")), lines(&format!("{c}.ref0")));
        for (i, want) in case["scores"].as_array().unwrap().iter().enumerate() {
            let s = sacrebleu::corpus_bleu(&[hyp[i].as_str()], &[vec![r[i].as_str()]], &o);
            close(s.score, want.as_f64().unwrap(), 1e-9, &format!("{c} {smooth:?} segment {i}: {:?}", hyp[i]));
        }
    }
    // the CLI's options, and what it refuses
    let (h, r0) = (corpus("en.hyp"), corpus("en.ref0"));
    let v = metrics_cli(&["bleu", "--hyp", h.to_str().unwrap(), "--ref", r0.to_str().unwrap(), "--smooth-method", "add-k", "--smooth-value", "0.5", "--json"]);
    assert_eq!(v["signature"], "nrefs:1|case:mixed|eff:no|tok:13a|smooth:add-k[0.50]|version:2.6.0");
    for (args, want) in [(&["--smooth-method", "exp", "--smooth-value", "1"][..], "takes no value"), (&["--smooth-method", "floor", "--smooth-value", "-1"][..], "must be a number ≥ 0"), (&["--smooth-method", "lin"][..], "unknown smooth method \"lin\"")] {
        let out = llmeval(&[&["metrics", "bleu", "--hyp", h.to_str().unwrap(), "--ref", r0.to_str().unwrap()][..], args].concat());
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn sentence_bleu_equals_sacrebleu() {
    let g = goldens();
    for case in g["sentence_bleu"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let o = BleuOptions { tokenize: case["tokenize"].as_str().unwrap().parse().unwrap(), lowercase: false, smooth: Smooth::Exp };
        let hyp = lines(&format!("{c}.hyp"));
        let r = lines(&format!("{c}.ref0"));
        for (i, want) in case["scores"].as_array().unwrap().iter().enumerate() {
            let s = sacrebleu::sentence_bleu(&hyp[i], &[&r[i]], &o);
            close(s.score, want.as_f64().unwrap(), 1e-4, &format!("{c} segment {i}: {:?}", hyp[i]));
        }
    }
}

#[test]
fn chrf_equals_sacrebleu() {
    let g = goldens();
    for case in g["chrf"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let hyp = lines(&format!("{c}.hyp"));
        let refs = refs_of(c, case["refs"].as_u64().unwrap() as usize);
        let hyp: Vec<&str> = hyp.iter().map(String::as_str).collect();
        let refs: Vec<Vec<&str>> = refs.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let o = ChrfOptions { word_order: case["word_order"].as_u64().unwrap() as usize, lowercase: case["lowercase"].as_bool().unwrap() };
        close(sacrebleu::corpus_chrf(&hyp, &refs, &o), case["score"].as_f64().unwrap(), 1e-4, &format!("{case}"));
    }
}

#[test]
fn rouge_equals_rouge_score() {
    let g = goldens();
    let types = [RougeType::N(1), RougeType::N(2), RougeType::L, RougeType::Lsum];
    for case in g["rouge"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let (hyp, r) = if c == "en" { (lines("en.hyp"), lines("en.ref0")) } else { (lines("sum.hyp.jsonl"), lines("sum.ref.jsonl")) };
        let stem = case["stem"].as_bool().unwrap();
        let mut sums = [[0.0f64; 3]; 4];
        for (i, (h, t)) in hyp.iter().zip(&r).enumerate() {
            let s = rouge::score(t, h, &types, stem);
            for (k, ty) in types.iter().enumerate() {
                close(s[k].fmeasure, case["per_sample"][i][ty.name()].as_f64().unwrap(), 1e-9, &format!("{c} stem={stem} sample {i} {}", ty.name()));
                sums[k][0] += s[k].precision;
                sums[k][1] += s[k].recall;
                sums[k][2] += s[k].fmeasure;
            }
        }
        for (k, ty) in types.iter().enumerate() {
            let m = &case["mean"][ty.name()];
            let n = hyp.len() as f64;
            close(sums[k][0] / n, m["precision"].as_f64().unwrap(), 1e-9, "precision");
            close(sums[k][1] / n, m["recall"].as_f64().unwrap(), 1e-9, "recall");
            close(sums[k][2] / n, m["fmeasure"].as_f64().unwrap(), 1e-9, "fmeasure");
        }
    }
}

/// `--lowercase` and the tokenizers that lower-case follow Python 3.11's `str.lower()` on every
/// code point (tests/goldens/py311_lower.txt, by make_unicode_goldens.py), though Rust's Unicode
/// tables are newer.
#[test]
fn lowercasing_is_python_3_11_on_every_code_point() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/py311_lower.txt")).unwrap();
    let hex = |h: &str| char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap();
    let mut want = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(' ');
        let c = hex(f.next().unwrap());
        want.insert(c, f.map(hex).collect::<String>());
    }
    assert!(want.len() > 1400, "{} mappings", want.len());
    let mut wrong = Vec::new();
    for c in (0..0x110000u32).filter_map(char::from_u32) {
        let got = llmeval::metric::text::py_lower(&c.to_string());
        if got != want.get(&c).cloned().unwrap_or_else(|| c.to_string()) {
            wrong.push(format!("U+{:04X}", c as u32));
        }
    }
    assert!(wrong.is_empty(), "lower-cased unlike Python 3.11: {}", wrong.join(" "));
}

fn metrics_cli(args: &[&str]) -> Value {
    let mut all = vec!["metrics"];
    all.extend_from_slice(args);
    let out = llmeval(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_out(&out)
}

#[test]
fn cli_json_forms() {
    let g = goldens();
    let (h, r0, r1, r2) = (corpus("en.hyp"), corpus("en.ref0"), corpus("en.ref1"), corpus("en.ref2"));
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let v = metrics_cli(&["bleu", "--hyp", &p(&h), "--ref", &p(&r0), "--ref", &p(&r1), "--ref", &p(&r2), "--tokenize", "intl", "--lowercase", "--json"]);
    let want = g["bleu"].as_array().unwrap().iter().find(|c| c["corpus"] == "en" && c["refs"] == 3 && c["tokenize"] == "intl" && c["lowercase"] == true).unwrap();
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["bp", "precisions", "ref_len", "score", "signature", "sys_len"]);
    assert_eq!(v["signature"], "nrefs:3|case:lc|eff:no|tok:intl|smooth:exp|version:2.6.0", "sacrebleu's signature of these settings");
    close(v["score"].as_f64().unwrap(), want["score"].as_f64().unwrap(), 1e-4, "cli bleu");
    assert_eq!(v["sys_len"], want["sys_len"]);

    // CRLF files give the same numbers as LF files.
    let crlf = metrics_cli(&["bleu", "--hyp", &p(&corpus("en-crlf.hyp")), "--ref", &p(&r0), "--json"]);
    let lf = metrics_cli(&["bleu", "--hyp", &p(&h), "--ref", &p(&r0), "--json"]);
    assert_eq!(crlf, lf);

    let v = metrics_cli(&["chrf", "--hyp", &p(&h), "--ref", &p(&r0), "--word-order", "2", "--json"]);
    let want = g["chrf"].as_array().unwrap().iter().find(|c| c["corpus"] == "en" && c["refs"] == 1 && c["word_order"] == 2 && c["lowercase"] == false).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2);
    assert_eq!(v["signature"], "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0", "sacrebleu's signature of chrF++");
    close(v["score"].as_f64().unwrap(), want["score"].as_f64().unwrap(), 1e-4, "cli chrf++");
    let v = metrics_cli(&["chrf", "--hyp", &p(&h), "--ref", &p(&r0), "--lowercase", "--json"]);
    let want = g["chrf"].as_array().unwrap().iter().find(|c| c["corpus"] == "en" && c["refs"] == 1 && c["word_order"] == 0 && c["lowercase"] == true).unwrap();
    close(v["score"].as_f64().unwrap(), want["score"].as_f64().unwrap(), 1e-4, "cli chrf --lowercase");
    assert_eq!(v["signature"], "nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|version:2.6.0");

    let v = metrics_cli(&["rouge", "--hyp", &p(&corpus("sum.hyp.jsonl")), "--ref", &p(&corpus("sum.ref.jsonl")), "--jsonl", "--stem", "--json"]);
    let want = g["rouge"].as_array().unwrap().iter().find(|c| c["corpus"] == "sum" && c["stem"] == true).unwrap();
    for t in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
        for k in ["precision", "recall", "fmeasure"] {
            close(v[t][k].as_f64().unwrap(), want["mean"][t][k].as_f64().unwrap(), 1e-6, &format!("cli {t} {k}"));
        }
    }
    let v = metrics_cli(&["rouge", "--hyp", &p(&h), "--ref", &p(&r0), "--types", "rouge2,rougeL", "--json"]);
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["rouge2", "rougeL"]);
}

#[test]
fn cli_input_errors_name_file_and_line() {
    let dir = TempDir::new("metrics-errors");
    let h = dir.write("h.txt", "a b c\nd e f\n");
    let r = dir.write("r.txt", "a b c\n");
    let out = llmeval(&["metrics", "bleu", "--hyp", h.to_str().unwrap(), "--ref", r.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("r.txt") && e.contains("h.txt") && e.contains("line 2"), "{e}");

    let bad = dir.write("bad.txt", "");
    std::fs::write(&bad, b"fine\n\xc3\x28\n").unwrap();
    let out = llmeval(&["metrics", "chrf", "--hyp", bad.to_str().unwrap(), "--ref", h.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.txt:2") && stderr(&out).contains("UTF-8"), "{}", stderr(&out));

    let out = llmeval(&["metrics", "rouge", "--hyp", h.to_str().unwrap(), "--ref", dir.path().join("missing.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("missing.txt") && e.matches("os error").count() == 1, "the file and the cause once: {e}");

    let out = llmeval(&["metrics", "rouge", "--hyp", h.to_str().unwrap(), "--ref", h.to_str().unwrap(), "--jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("h.txt:1"), "{}", stderr(&out));

    let out = llmeval(&["metrics", "rouge", "--hyp", h.to_str().unwrap(), "--ref", h.to_str().unwrap(), "--types", "rouge1,rougeX"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rougeX"), "{}", stderr(&out));
    let out = llmeval(&["metrics", "rouge", "--hyp", h.to_str().unwrap(), "--ref", h.to_str().unwrap(), "--types", "rouge1,rougeL,rouge1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--types lists rouge1 twice"), "{}", stderr(&out));

    let blank = dir.write("blank.jsonl", "\"a\"\n\n");
    let out = llmeval(&["metrics", "rouge", "--hyp", blank.to_str().unwrap(), "--ref", blank.to_str().unwrap(), "--jsonl"]);
    assert!(out.status.code() == Some(2) && stderr(&out).contains("blank.jsonl:2: empty line (--jsonl)"), "{}", stderr(&out));

    // a lone UTF-16 surrogate (Python reads it) cannot be text: said so, with the fix
    let lone = dir.write("lone.jsonl", "\"fine\"\n\"x \\ud800 y\"\n");
    let out = llmeval(&["metrics", "rouge", "--hyp", lone.to_str().unwrap(), "--ref", lone.to_str().unwrap(), "--jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lone.jsonl:2") && stderr(&out).contains("a lone one is not text: remove it or write \\ufffd"), "{}", stderr(&out));

    // no samples: an error, not a score of 0 that reads like a result
    let empty = dir.write("empty.txt", "");
    for metric in ["bleu", "chrf", "rouge", "chatglm", "distinct"] {
        let mut args = vec!["metrics", metric, "--hyp", empty.to_str().unwrap()];
        if metric != "distinct" {
            args.extend(["--ref", empty.to_str().unwrap()]);
        }
        let out = llmeval(&args);
        assert_eq!(out.status.code(), Some(2), "{metric}");
        assert!(stderr(&out).contains("empty.txt: no samples"), "{metric}: {}", stderr(&out));
    }
}

#[test]
fn chatglm_metrics_equal_the_chatglm2_evaluation() {
    let g = goldens();
    for case in g["chatglm"].as_array().unwrap() {
        let c = case["corpus"].as_str().unwrap();
        let (hyp, r) = (lines(&format!("{c}.hyp")), lines(&format!("{c}.ref0")));
        let n = case["per_sample"]["bleu-4"].as_array().unwrap().len();
        for (i, (h, t)) in hyp.iter().zip(&r).take(n).enumerate() {
            let s = llmeval::metric::chatglm::sample(h, t);
            for (k, key) in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"].iter().enumerate() {
                let want = case["per_sample"][key][i].as_f64().unwrap();
                // Per sample the values are rounded to 4 decimals, so they agree exactly.
                assert!((s[k] - want).abs() < 1e-9, "{c} sample {i} {key}: ours {} vs reference {want} ({h:?} / {t:?})", s[k]);
            }
        }
        let hs: Vec<&str> = hyp.iter().take(n).map(String::as_str).collect();
        let rs: Vec<&str> = r.iter().take(n).map(String::as_str).collect();
        let m = llmeval::metric::chatglm::corpus(&hs, &rs);
        for (k, key) in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"].iter().enumerate() {
            close(m[k], case["mean"][key].as_f64().unwrap(), 1e-9, &format!("{c} mean {key}"));
        }
    }
}

#[test]
fn cli_chatglm_and_distinct() {
    let g = goldens();
    let want = g["chatglm"].as_array().unwrap().iter().find(|c| c["corpus"] == "zh").unwrap();
    let p = |x: PathBuf| x.to_str().unwrap().to_string();
    let v = metrics_cli(&["chatglm", "--hyp", &p(corpus("zh.hyp")), "--ref", &p(corpus("zh.ref0")), "--json"]);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["bleu-4", "rouge-1", "rouge-2", "rouge-l"]);
    for key in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"] {
        close(v[key].as_f64().unwrap(), want["mean"][key].as_f64().unwrap(), 1e-2, key);
    }
    let dir = TempDir::new("distinct");
    let f = dir.write("outs.txt", "the cat sat\nthe cat ran\n");
    let v = metrics_cli(&["distinct", "--hyp", f.to_str().unwrap(), "--json"]);
    close(v["distinct-1"].as_f64().unwrap(), 4.0 / 6.0, 1e-12, "distinct-1");
    close(v["distinct-2"].as_f64().unwrap(), 0.75, 1e-12, "distinct-2");
    assert!(v["self-bleu"].as_f64().unwrap() >= 0.0);
}
