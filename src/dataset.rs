//! ① Data files: JSONL, a JSON array, or CSV/TSV with a header, into rows of JSON objects.
//!
//! Every row remembers the line it came from so that a template failing on row 1,234 can say so.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// One data row: a JSON object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub fields: Map<String, Value>,
    /// 1-based line (JSONL, CSV) or array index + 1 (JSON).
    pub line: usize,
}

/// Loads a data file; the format follows the extension (`.jsonl`/`.ndjson`, `.json`, `.csv`,
/// `.tsv`).
pub fn load(path: &Path) -> Result<Vec<Row>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), cause: source })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = crate::util::line_of(&String::from_utf8_lossy(&bytes[..e.valid_up_to()]), e.valid_up_to());
            return Err(Error::data(format!("{}:{line}", path.display()), "invalid UTF-8; save the file as UTF-8"));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows = match ext.as_str() {
        "jsonl" | "ndjson" => parse_jsonl(path, text)?,
        "json" => parse_json(path, text)?,
        "csv" => parse_csv(path, text, b',')?,
        "tsv" => parse_csv(path, text, b'\t')?,
        _ => {
            return Err(Error::data(
                path.display().to_string(),
                format!("unknown data format {ext:?}; use .jsonl, .json (an array of objects), .csv or .tsv"),
            ))
        }
    };
    if rows.is_empty() {
        return Err(Error::data(path.display().to_string(), "the data file has no rows"));
    }
    Ok(rows)
}

fn object(path: &Path, line: usize, v: Value) -> Result<Row> {
    match v {
        Value::Object(fields) => Ok(Row { fields, line }),
        other => Err(Error::data(
            format!("{}:{line}", path.display()),
            format!("each row must be a JSON object, found {}", kind(&other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message, and what to do where it is not plain: a `\uD800`–`\uDFFF` escape
/// without its pair (which Python reads) cannot be text.
pub fn json_problem(e: &serde_json::Error) -> String {
    let m = e.to_string();
    if m.contains("surrogate") || m.contains("hex escape") {
        format!("{m} (a \\uD800-\\uDFFF escape must be half of a surrogate pair; a lone one is not text: remove it or write \\ufffd)")
    } else {
        m
    }
}

/// Parses JSON as serde_json does, except that an object naming a key twice is an error:
/// serde_json keeps the last value, so a row with two "answer" keys would be scored against one
/// of them without a word (CSV headers get the same check).
pub fn parse_strict(text: &str) -> serde_json::Result<Value> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// [`parse_strict`]'s visitor: builds a [`Value`] and refuses a repeated key.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format_args!("the key {k:?} appears twice in one object; keep one")));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = parse_strict(line)
            .map_err(|e| Error::data(format!("{}:{}", path.display(), i + 1), format!("invalid JSON: {}", json_problem(&e))))?;
        rows.push(object(path, i + 1, v)?);
    }
    Ok(rows)
}

fn parse_json(path: &Path, text: &str) -> Result<Vec<Row>> {
    let v = parse_strict(text)
        .map_err(|e| Error::data(format!("{}:{}", path.display(), e.line()), format!("invalid JSON: {}", json_problem(&e))))?;
    let Value::Array(items) = v else {
        return Err(Error::data(path.display().to_string(), format!("expected a JSON array of objects, found {}", kind(&v))));
    };
    // serde_json keeps no positions inside a parsed value: find each element's line in the text
    let lines = element_lines(text);
    items.into_iter().enumerate().map(|(i, v)| object(path, lines.get(i).copied().unwrap_or(0), v)).collect()
}

/// The 1-based line where each element of the top-level array in `text` (valid JSON) starts.
pub(crate) fn element_lines(text: &str) -> Vec<usize> {
    let (mut out, mut line, mut depth) = (Vec::new(), 1, 0usize);
    let (mut in_string, mut escaped, mut expect) = (false, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        if depth == 1 && expect && c != ']' {
            out.push(line);
            expect = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expect = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    out
}

fn parse_csv(path: &Path, text: &str, delimiter: u8) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).flexible(false).from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::data(format!("{}:1", path.display()), format!("bad header: {e}")))?
        .clone();
    for (i, h) in headers.iter().enumerate() {
        if headers.iter().take(i).any(|x| x == h) {
            return Err(Error::data(format!("{}:1", path.display()), format!("column {h:?} appears twice in the header; rename one")));
        }
    }
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            Error::data(format!("{}:{line}", path.display()), format!("bad CSV record: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let fields = headers.iter().zip(rec.iter()).map(|(h, v)| (h.to_string(), Value::String(v.to_string()))).collect();
        rows.push(Row { fields, line });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("llmeval-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn formats() {
        let a = load(&write("a.jsonl", "{\"q\":1}\n\n{\"q\":2}\n")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].line, 3);
        let b = load(&write("b.json", "[{\"q\":1},{\"q\":2}]")).unwrap();
        assert_eq!(b.len(), 2);
        let c = load(&write("c.csv", "q,a\n\"1,2\",3\n4,5\n")).unwrap();
        assert_eq!(c[0].fields["q"], "1,2");
        assert_eq!(c[1].line, 3);
    }

    #[test]
    fn a_key_named_twice_is_an_error_and_other_values_read_as_serde_json_reads_them() {
        let e = load(&write("k.jsonl", "{\"q\":1,\"a\":\"x\"}\n{\"q\":2,\"a\":\"x\",\"a\":\"y\"}\n")).unwrap_err().to_string();
        assert!(e.contains("k.jsonl:2") && e.contains("the key \"a\" appears twice"), "{e}");
        let e = load(&write("k.json", "[\n {\"q\": 1},\n {\"q\": {\"x\": 1,\n  \"x\": 2}}\n]")).unwrap_err().to_string();
        assert!(e.contains("k.json:4") && e.contains("the key \"x\" appears twice"), "{e}");
        // the same key in different objects, and everything else, as serde_json reads it
        let text = r#"{"a": {"a": [1, -2, 18446744073709551615, 18446744073709551616, 0.1, 1.7976931348623157e308, 2.5e-8, true, null, "\u00e9\ud83d\ude00"]}, "b": [{"a": 1}, {"a": 2}]}"#;
        assert_eq!(parse_strict(text).unwrap(), serde_json::from_str::<Value>(text).unwrap());
        assert!(parse_strict("{\"a\": 1} x").is_err(), "trailing characters");
        assert!(parse_strict("[1e400]").is_err() && serde_json::from_str::<Value>("[1e400]").is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let e = load(&write("d.jsonl", "{\"q\":1}\n{oops}\n")).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2"), "{e}");
        let e = load(&write("e.jsonl", "{\"q\":1}\n[1]\n")).unwrap_err().to_string();
        assert!(e.contains("e.jsonl:2") && e.contains("an array"), "{e}");
        let e = load(&write("f.csv", "q,a\n1,2\n3\n")).unwrap_err().to_string();
        assert!(e.contains("f.csv:3"), "{e}");
        let e = load(&write("h.csv", "q,a,q\n1,2,3\n")).unwrap_err().to_string();
        assert!(e.contains("h.csv:1") && e.contains("column \"q\" appears twice"), "{e}");
        // a JSON array's rows are located by the line their element starts on
        let e = load(&write("i.json", "[\n  {\"q\": \"[a, {b}]\\\" ,\"},\n\n  {\"q\": 2},\n  3\n]")).unwrap_err().to_string();
        assert!(e.contains("i.json:5") && e.contains("a number"), "{e}");
        assert_eq!(element_lines("[{\"a\": [1,\n2]},\n\"x,\", [3]\n,\n4]"), [1, 3, 3, 5]);
        let e = load(&write("g.txt", "x")).unwrap_err().to_string();
        assert!(e.contains("unknown data format"), "{e}");
    }
}

/// Reads a samples file for `llmeval metrics`: one sample per line (a trailing `\r` is dropped,
/// so CRLF files read like LF files), or with `jsonl` one JSON string per line (so a sample can
/// hold newlines). Invalid UTF-8 or a line that is not a JSON string is an error naming the line.
pub fn read_samples(path: &Path, jsonl: bool) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), cause: source })?;
    let mut out = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    if bytes.is_empty() {
        return Ok(out);
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            Error::data(format!("{}:{}", path.display(), i + 1), format!("invalid UTF-8 at byte {} of the line; save the file as UTF-8", e.valid_up_to() + 1))
        })?;
        let line = if i == 0 { line.strip_prefix('\u{feff}').unwrap_or(line) } else { line };
        if jsonl {
            if line.trim().is_empty() {
                return Err(Error::data(format!("{}:{}", path.display(), i + 1), "empty line (--jsonl): each line is one sample as a JSON string; write \"\" for an empty sample"));
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::String(s)) => out.push(s),
                Ok(other) => {
                    return Err(Error::data(format!("{}:{}", path.display(), i + 1), format!("expected a JSON string per line (--jsonl), found {}", kind(&other))));
                }
                Err(e) => return Err(Error::data(format!("{}:{}", path.display(), i + 1), format!("invalid JSON string (--jsonl): {}", json_problem(&e)))),
            }
        } else {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    #[test]
    fn lines_crlf_and_jsonl() {
        let dir = std::env::temp_dir().join(format!("llmeval-samples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        std::fs::write(&p, "a\r\n\r\nb\n").unwrap();
        assert_eq!(read_samples(&p, false).unwrap(), ["a", "", "b"]);
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(read_samples(&p, false).unwrap(), ["a", "b"]);
        std::fs::write(&p, "\"x\\ny\"\n\"z\"\n").unwrap();
        assert_eq!(read_samples(&p, true).unwrap(), ["x\ny", "z"]);
        std::fs::write(&p, "\"x\"\n3\n").unwrap();
        assert!(read_samples(&p, true).unwrap_err().to_string().contains("a.txt:2"));
        std::fs::write(&p, b"ok\n\xff\xfe\n").unwrap();
        let e = read_samples(&p, false).unwrap_err().to_string();
        assert!(e.contains("a.txt:2") && e.contains("UTF-8"), "{e}");
    }
}
