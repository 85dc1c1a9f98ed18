//! The response cache as `llmeval cache` shows and clears it.
//!
//! A response is cached under a hash of the model's identity, the request's kind and the request,
//! so the key says nothing a person can choose by. Each entry also keeps the identity itself, and
//! entries are chosen here, in Rust, by the label `cache list` prints for that identity (the served
//! model at its server, or the model file), by the run that asked, by kind and by age.

use crate::store::CacheEntry;
use serde_json::Value;
use std::collections::BTreeMap;

/// The label of entries cached before the model was recorded with them (schema 5).
pub const UNRECORDED: &str = "(model not recorded: cached by an older llmeval)";

/// The request kinds the cache holds.
pub const KINDS: [&str; 3] = ["generate", "loglikelihood", "loglikelihood_rolling"];

/// A person's name for a model identity: `served-model at base-url` for a server (with the API
/// when it is `completions`), the model file for the built-in engine (with the GPU precision when
/// it ran on one).
pub fn label(identity: Option<&str>) -> String {
    let Some(v) = identity.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
        return UNRECORDED.to_string();
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    match s("engine") {
        "openai" => {
            let api = if s("api") == "completions" { " (completions)" } else { "" };
            format!("{} at {}{api}", s("model"), s("base-url"))
        }
        "builtin" => {
            let backend = v.get("backend").and_then(Value::as_str).map(|b| format!(" ({b})")).unwrap_or_default();
            format!("{}{backend}", s("path"))
        }
        _ => v.to_string(),
    }
}

/// Which entries `cache clear` removes: all of the conditions given.
#[derive(Debug, Default)]
pub struct Filter {
    /// Text the entry's label must contain.
    pub model: Option<String>,
    /// Runs (ids) one of which must have asked for the entry.
    pub runs: Vec<String>,
    pub kind: Option<String>,
    /// Cached before this time (Unix seconds).
    pub before: Option<f64>,
    /// Only entries whose run has been deleted.
    pub orphaned: bool,
}

impl Filter {
    /// Whether the filter names anything; an empty one would clear the whole cache.
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && self.runs.is_empty() && self.kind.is_none() && self.before.is_none() && !self.orphaned
    }

    pub fn matches(&self, e: &CacheEntry) -> bool {
        self.model.as_ref().is_none_or(|m| label(e.model.as_deref()).contains(m.as_str()))
            && (self.runs.is_empty() || self.runs.contains(&e.run_id))
            && self.kind.as_ref().is_none_or(|k| *k == e.kind)
            && self.before.is_none_or(|t| e.created_at < t)
            && (!self.orphaned || !e.run_exists)
    }
}

/// Entries of one model and kind.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Group {
    pub model: String,
    pub kind: String,
    pub entries: usize,
    pub bytes: u64,
    pub oldest: f64,
    pub newest: f64,
    /// Entries whose run has since been deleted.
    pub orphaned: usize,
}

/// The entries grouped by model label and kind, in label, kind order.
pub fn groups<'a>(entries: impl IntoIterator<Item = &'a CacheEntry>) -> Vec<Group> {
    let mut out: BTreeMap<(String, String), Group> = BTreeMap::new();
    for e in entries {
        let model = label(e.model.as_deref());
        let g = out.entry((model.clone(), e.kind.clone())).or_insert_with(|| Group { model, kind: e.kind.clone(), entries: 0, bytes: 0, oldest: e.created_at, newest: e.created_at, orphaned: 0 });
        g.entries += 1;
        g.bytes += e.bytes;
        g.oldest = g.oldest.min(e.created_at);
        g.newest = g.newest.max(e.created_at);
        g.orphaned += usize::from(!e.run_exists);
    }
    out.into_values().collect()
}

/// Parses an age such as `30d`, `12h`, `90m`, `45s` or `2w` into seconds.
pub fn parse_age(text: &str) -> Result<f64, String> {
    let bad = || format!("--older-than {text:?}: give a whole number and a unit, s, m, h, d or w (e.g. 30d, 12h)");
    let t = text.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let per = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        'w' => 7.0 * 86400.0,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    Ok(n as f64 * per)
}

/// `1.5 MiB`-style sizes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, run: &str, kind: &str, model: Option<Value>, at: f64, run_exists: bool) -> CacheEntry {
        CacheEntry { key: key.into(), run_id: run.into(), kind: kind.into(), model: model.map(|m| m.to_string()), bytes: 100, created_at: at, run_exists }
    }

    fn remote(model: &str) -> Value {
        serde_json::json!({"engine": "openai", "base-url": "http://h:8000/v1", "model": model, "api": "chat", "system-prompt": null, "extra-body": {}})
    }

    #[test]
    fn labels_name_the_served_model_or_the_file() {
        assert_eq!(label(Some(&remote("m1").to_string())), "m1 at http://h:8000/v1");
        let mut c = remote("m1");
        c["api"] = "completions".into();
        assert_eq!(label(Some(&c.to_string())), "m1 at http://h:8000/v1 (completions)");
        let b = serde_json::json!({"engine": "builtin", "path": "/m/a.gguf", "files": [], "backend": "cuda bf16"});
        assert_eq!(label(Some(&b.to_string())), "/m/a.gguf (cuda bf16)");
        assert_eq!(label(None), UNRECORDED);
    }

    #[test]
    fn a_filter_keeps_the_entries_that_meet_every_condition() {
        let es = [
            entry("a", "r1", "generate", Some(remote("m1")), 10.0, true),
            entry("b", "r1", "loglikelihood", Some(remote("m2")), 20.0, true),
            entry("c", "r2", "generate", Some(remote("m2")), 30.0, false),
            entry("d", "r3", "generate", None, 5.0, true),
        ];
        let keys = |f: &Filter| es.iter().filter(|e| f.matches(e)).map(|e| e.key.as_str()).collect::<Vec<_>>();
        assert!(Filter::default().is_empty());
        assert_eq!(keys(&Filter { model: Some("m2".into()), ..Default::default() }), ["b", "c"]);
        assert_eq!(keys(&Filter { model: Some("m2".into()), kind: Some("generate".into()), ..Default::default() }), ["c"]);
        assert_eq!(keys(&Filter { runs: vec!["r1".into()], ..Default::default() }), ["a", "b"]);
        assert_eq!(keys(&Filter { before: Some(20.0), ..Default::default() }), ["a", "d"]);
        assert_eq!(keys(&Filter { orphaned: true, ..Default::default() }), ["c"]);
        assert_eq!(keys(&Filter { model: Some("not recorded".into()), ..Default::default() }), ["d"]);
        let g = groups(&es);
        assert_eq!(g.iter().map(|g| (g.model.as_str(), g.kind.as_str(), g.entries, g.orphaned)).collect::<Vec<_>>(), [
            (UNRECORDED, "generate", 1, 0),
            ("m1 at http://h:8000/v1", "generate", 1, 0),
            ("m2 at http://h:8000/v1", "generate", 1, 1),
            ("m2 at http://h:8000/v1", "loglikelihood", 1, 0),
        ]);
    }

    #[test]
    fn ages_take_a_unit_and_refuse_the_rest() {
        assert_eq!(parse_age("30d"), Ok(30.0 * 86400.0));
        assert_eq!(parse_age("12h"), Ok(12.0 * 3600.0));
        assert_eq!(parse_age("2w"), Ok(14.0 * 86400.0));
        assert_eq!(parse_age("0s"), Ok(0.0));
        for bad in ["", "d", "30", "1.5h", "-3d", "3 days", "30D"] {
            let e = parse_age(bad).unwrap_err();
            assert!(e.contains("s, m, h, d or w"), "{bad}: {e}");
        }
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }
}
