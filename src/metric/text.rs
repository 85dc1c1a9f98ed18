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

/// Python 3.11's `s.lower()`: Rust's `to_lowercase` (the same full mappings and final sigma)
/// except for letters Unicode gained later, which Python 3.11 does not know as cased. Those split
/// the text, so a sigma before one is final, as Python 3.11 sees it.
pub fn py_lower(s: &str) -> String {
    if !s.chars().any(newer_upper) {
        return s.to_lowercase();
    }
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    for (i, c) in s.char_indices().filter(|&(_, c)| newer_upper(c)) {
        out += &s[from..i].to_lowercase();
        out.push(c);
        from = i + c.len_utf8();
    }
    out + &s[from..].to_lowercase()
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
}
