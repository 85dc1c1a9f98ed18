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

/// Python's `s.lower()` (Rust's `to_lowercase` has the same full mappings and final sigma).
pub fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace() {
        assert_eq!(py_split(" a\u{1f}b\u{3000}c\t").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(py_strip("\u{1c} x \u{a0}"), "x");
        assert_eq!(py_lower("ΣΑΣ ΟΔΟΣ"), "σας οδος");
    }
}
