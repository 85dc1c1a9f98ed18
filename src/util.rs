//! Small shared helpers: hashing, timestamps, line numbers from byte offsets.

use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// 1-based line number of byte offset `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A TOML parse error as (`line`, message): the message names the key set on that line when
/// the parser's own does not (its "invalid value: integer -1, expected u32" names no field).
pub fn toml_error(text: &str, e: &toml::de::Error) -> (Option<usize>, String) {
    let message = e.message().trim_end().to_string();
    let Some(span) = e.span() else { return (None, message) };
    let line = line_of(text, span.start);
    let key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_.\"".contains(c)) && !message.contains(&format!("`{}`", k.trim_matches('"')))
    });
    match key {
        Some(k) => (Some(line), format!("`{}`: {message}", k.trim_matches('"'))),
        None => (Some(line), message),
    }
}

/// Seconds since the Unix epoch as a float.
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn iso8601(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The code point ranges of `class` in a pinned Unicode table: one class a line, `CLASS A-B C …`
/// in hex (the files under `src/*/data/`, written by the scripts in tests/goldens).
pub fn pinned_ranges(table: &str, class: char) -> Vec<(u32, u32)> {
    let line = table.lines().find_map(|l| l.strip_prefix(class).and_then(|r| r.strip_prefix(' '))).expect("the class is pinned");
    let hex = |x: &str| u32::from_str_radix(x, 16).expect("hex code points");
    line.split(' ').map(|r| r.split_once('-').unwrap_or((r, r))).map(|(a, b)| (hex(a), hex(b))).collect()
}

/// Whether `c` lies in sorted, disjoint `ranges`.
pub fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    ranges.binary_search_by(|&(a, b)| if b < c { std::cmp::Ordering::Less } else if a > c { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Equal }).is_ok()
}

/// `" (did you mean `x`?)"` for the candidate nearest `name` when it is a likely slip (case,
/// `_` for `-`, or an edit distance of at most a third of its length), else `""`.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let norm = |s: &str| s.to_lowercase().replace('_', "-");
    let (n, target) = (name.chars().count(), norm(name));
    candidates
        .into_iter()
        .map(|c| (edit_distance(&target, &norm(c)), c))
        .filter(|&(d, _)| d <= (n / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map_or(String::new(), |(_, c)| format!(" (did you mean `{c}`?)"))
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_slips_only() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        let metrics = ["exact-match", "f1", "bleu", "rougeL", "acc-norm"];
        assert_eq!(did_you_mean("exact_match", metrics), " (did you mean `exact-match`?)");
        assert_eq!(did_you_mean("rougel", metrics), " (did you mean `rougeL`?)");
        assert_eq!(did_you_mean("acc_nrom", metrics), " (did you mean `acc-norm`?)");
        assert_eq!(did_you_mean("questoin", ["answer", "question"]), " (did you mean `question`?)");
        assert_eq!(did_you_mean("bertscore", metrics), "");
        assert_eq!(did_you_mean("f2", ["f1"]), " (did you mean `f1`?)");
        assert_eq!(did_you_mean("x", ["answer"]), "");
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_811_108.0), "2026-11-27T20:25:08Z");
        assert_eq!(iso8601(951_782_400.0), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn lines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
