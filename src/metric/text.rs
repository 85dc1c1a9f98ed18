//! Python string semantics that the reference metrics rely on: `str.split()`, `str.strip()`,
//! `str.lower()` and `re.split(r"\s+")` whitespace, which counts U+001C–U+001F as space where
//! Unicode's White_Space (Rust's `char::is_whitespace`) does not.

/// Python's `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Letters that have a lower-case form in Rust's Unicode tables but not in Python 3.11's
/// (Unicode 14): `str.lower()` leaves them as they are.
const NEWER_UPPER: &[(char, char)] = &[
    ('\u{1c89}', '\u{1c89}'),
    ('\u{a7cb}', '\u{a7cc}'),
    ('\u{a7ce}', '\u{a7ce}'),
    ('\u{a7d2}', '\u{a7d2}'),
    ('\u{a7d4}', '\u{a7d4}'),
    ('\u{a7da}', '\u{a7da}'),
    ('\u{a7dc}', '\u{a7dc}'),
    ('\u{10d50}', '\u{10d65}'),
    ('\u{16ea0}', '\u{16eb8}'),
];

fn newer_upper(c: char) -> bool {
    NEWER_UPPER.iter().any(|&(a, b)| (a..=b).contains(&c))
}

/// Python 3.11's classes around a capital sigma (`data/py311_sigma.txt`, written by
/// tests/goldens/make_unicode_goldens.py): `I` case-ignorable, `C` cased. Rust's own tables are
/// newer (U+0295 ʕ is case-ignorable only since Unicode 16), so `str::to_lowercase` picks σ or ς
/// differently next to such characters.
const PY311_SIGMA: &str = include_str!("data/py311_sigma.txt");

/// Whether `c` is in class `class` of [`PY311_SIGMA`].
fn py311_class(class: char, c: char) -> bool {
    static TABLES: std::sync::OnceLock<[Vec<(u32, u32)>; 2]> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| [crate::util::pinned_ranges(PY311_SIGMA, 'I'), crate::util::pinned_ranges(PY311_SIGMA, 'C')]);
    crate::util::in_ranges(&tables[usize::from(class == 'C')], c as u32)
}

/// Python 3.11's choice for the capital sigma at `chars[i]`: final (ς) after a cased character
/// and not before one, case-ignorable characters skipped both ways.
fn final_sigma(chars: &[char], i: usize) -> bool {
    let not_ignorable = |c: &&char| !py311_class('I', **c);
    let cased = |c: Option<&char>| c.is_some_and(|&c| py311_class('C', c));
    cased(chars[..i].iter().rev().find(not_ignorable)) && !cased(chars[i + 1..].iter().find(not_ignorable))
}

/// Python 3.11's `s.lower()`: Rust's per-character full mappings, except for letters Unicode
/// gained later (Python 3.11 leaves them as they are), and a capital sigma final or not as
/// Python 3.11's Unicode 14 tables see it.
pub fn py_lower(s: &str) -> String {
    if !s.chars().any(|c| c == 'Σ' || newer_upper(c)) {
        return s.to_lowercase(); // per character: only the sigma looks at its neighbours
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            'Σ' => out.push(if final_sigma(&chars, i) { 'ς' } else { 'σ' }),
            c if newer_upper(c) => out.push(c),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace() {
        assert_eq!(py_split(" a\u{1f}b\u{3000}c\t").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(py_strip("\u{1c} x \u{a0}"), "x");
        assert_eq!(py_lower("ΣΑΣ ΟΔΟΣ"), "σας οδος");
        assert_eq!(py_lower("AΣ\u{1c89}Σ\u{10d50}B"), "aς\u{1c89}σ\u{10d50}b");
    }

    #[test]
    fn final_sigma_as_python_3_11() {
        // str.lower() in Python 3.11: ʕ (U+0295) is cased there, case-ignorable in Rust's tables
        assert_eq!(py_lower("AΣ\u{295} b"), "aσ\u{295} b");
        // U+0897 is unknown to Unicode 14 (neither class): it ends the word
        assert_eq!(py_lower("ΑΣ\u{897}Α"), "ας\u{897}α");
        assert_eq!(py_lower("A\u{1171e}Σ b"), "a\u{1171e}ς b");
        // the case-ignorable apostrophe and combining marks are skipped both ways
        assert_eq!(py_lower("ΟΔΟΣ' Σ AΣ\u{301}B Σ"), "οδος' σ aσ\u{301}b σ");
        for (text, want) in [("ΣΑΣ", "σας"), ("AΣ.", "aς."), ("'Σ'", "'σ'"), ("Σ", "σ"), ("1Σ", "1σ")] {
            assert_eq!(py_lower(text), want, "{text}");
        }
    }
}
