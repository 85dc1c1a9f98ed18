//! Tokenizer rebuilt from GGUF `tokenizer.ggml.*` data to give llama.cpp's ids: byte-level BPE
//! after llama.cpp's per-`pre` splitting (`gpt2`), or score-ordered SentencePiece merging with
//! byte fallback (`llama`). Splitters llama.cpp hand-codes (GPT-2, Llama-3) are scanners here, the
//! rest `regex` patterns whose one lookahead, `\s+(?!\S)`, is emulated by trimming the match.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use regex::{CaptureLocations, Regex};
use thiserror::Error;

/// Vocabulary metadata as read from a GGUF file (`tokenizer.ggml.*`), passed as plain data.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` (or empty) selects llama.cpp's `default` splitting.
    /// Ignored for `llama`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte.
    /// Empty means every token is normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priority). Empty means all zero.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`, `"left right"`, rank = position. Used by `gpt2` only.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`; `None` if the key is absent. As in llama.cpp, an absent or
    /// out-of-range id falls back to the model type's default (1 for `llama`, 11 for `gpt2`) if
    /// that id exists.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`; default when absent: 2 for `llama`, 11 for `gpt2`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`; default when absent: 0 for `llama`, none for `gpt2`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether the caller should put BOS in front of a prompt.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_space_prefix` (llama.cpp's default is true for `llama`).
    /// Used by `llama` only.
    pub add_space_prefix: bool,
}

/// Why a [`TokenizerSpec`] cannot be turned into a [`Tokenizer`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenizerError {
    #[error("unknown tokenizer model: '{0}' (supported: 'gpt2', 'llama')")]
    UnknownModel(String),
    #[error("unknown pre-tokenizer type: '{0}'")]
    UnknownPre(String),
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("the vocabulary has {0} tokens, more than a u32 id can address")]
    VocabTooLarge(usize),
    #[error("{field} has {got} entries but the vocabulary has {tokens} tokens")]
    ShortArray {
        field: &'static str,
        got: usize,
        tokens: usize,
    },
    #[error("duplicate token in vocabulary: '{text}' has ids {first} and {second}")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error(
        "add_bos is true, but there is no bos token (bos id: {})",
        .0.map_or("unset".to_string(), |id| id.to_string())
    )]
    MissingBos(Option<u32>),
    #[error("invalid pre-tokenizer regex '{pattern}': {message}")]
    BadRegex { pattern: String, message: String },
}

/// Token attribute, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    Undefined,
}

impl Kind {
    fn from_type(t: i32) -> Kind {
        match t {
            1 => Kind::Normal,
            2 => Kind::Unknown,
            3 => Kind::Control,
            4 => Kind::UserDefined,
            5 => Kind::Unused,
            6 => Kind::Byte,
            _ => Kind::Undefined,
        }
    }

    /// Tokens cut out of the input text literally before normal tokenization, rendered verbatim.
    fn is_special(self) -> bool {
        matches!(self, Kind::Unknown | Kind::Control | Kind::UserDefined)
    }
}

/// End-of-generation texts that llama.cpp forces to control type, whatever the file says.
const FORCED_CONTROL: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    "[e~[",
];

// ------------------------------------------------------------------------------------------------
// Pre-tokenizer rules per `tokenizer.ggml.pre`, in llama.cpp's order. Patterns equal to GPT2 or
// LLAMA3 run on hand-written scanners, all others on `regex`. The rules apply one after another,
// each to every piece the previous one produced; matches and the gaps between them become pieces.

/// GPT-2's split pattern as llama.cpp writes it (no trailing `|\s+`: lone spaces split anyway).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama-3's split pattern with llama.cpp's case-insensitive contractions.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// llama.cpp spells "letter but not a-z" as `(?=[\p{L}])([^a-z])`; `regex` has class intersection.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]*[\p{L}&&[^A-Z]]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{L}&&[^a-z]]+[\p{L}&&[^A-Z]]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
/// Cased letters as DeepSeek-LLM's tokenizer lists them (escaped: several are NFC-unstable).
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";
const DEEPSEEK_LLM_PUNCT: &str =
    r"\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+";
const CJK_HANGUL: &str = r"[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
const CJK_KANA: &str = r"[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+";
const PORO: &str = r" ?[^(\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+";

/// Split rules of a pre type and its `ignore_merges` flag (a piece that is a token is taken whole).
fn pre_rules(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    let rules = match pre {
        "" | "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
        ),
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code"
        | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4" => {
            (vec![GPT2], false)
        }
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => (vec![r"\p{N}", GPT2], false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => (vec![LLAMA3], false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => (vec![QWEN2], false),
        "qwen35" => (vec![QWEN35], false),
        "seed-coder" => (vec![SEED_CODER], false),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => (vec![BAILINGMOE], false),
        "minicpm5" => (vec![r"\p{N}{1,3}", MINICPM5], true),
        "tekken" => (vec![TEKKEN], true),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => (vec![GPT4O], false),
        "deepseek-llm" => (
            vec![
                r"[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                DEEPSEEK_LLM_PUNCT,
                r"\s+$",
                CJK_HANGUL,
                r"\p{N}+",
            ],
            false,
        ),
        "deepseek-coder" => (
            vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"],
            false,
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            (vec![r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3], false)
        }
        "falcon" => (
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
        ),
        "poro-chat" | "bloom" | "gpt3-finnish" => (vec![PORO], false),
        "viking" => (vec![PORO, r"\p{N}"], false),
        _ => return None,
    };
    Some(rules)
}

/// The only lookahead the supported patterns use.
const WS_LOOKAHEAD: &str = r"\s+(?!\S)";

#[derive(Clone)]
enum Splitter {
    /// llama.cpp's hand-coded GPT-2 splitter.
    Gpt2,
    /// llama.cpp's hand-coded Llama-3 splitter.
    Llama3,
    /// A `regex` pattern; `ws_group` is the capture slot standing for `\s+(?!\S)`, if any.
    Regex { re: Regex, ws_group: Option<usize> },
}

impl Splitter {
    fn new(pattern: &str) -> Result<Splitter, TokenizerError> {
        if pattern == GPT2 {
            return Ok(Splitter::Gpt2);
        }
        if pattern == LLAMA3 {
            return Ok(Splitter::Llama3);
        }
        // `regex` has no lookahead: match the whitespace run in a named group, trim it afterwards.
        let translated = pin_classes(&pattern.replacen(WS_LOOKAHEAD, r"(?P<ws>\s+)", 1));
        let re = Regex::new(&translated).map_err(|e| TokenizerError::BadRegex {
            pattern: pattern.to_string(),
            message: e.to_string(),
        })?;
        let ws_group = re.capture_names().position(|name| name == Some("ws"));
        Ok(Splitter::Regex { re, ws_group })
    }

    /// Splits `s` (one piece) and appends the sub-pieces as byte ranges offset by `base`.
    fn split(&self, s: &str, base: usize, scratch: &mut Scratch, out: &mut Vec<(usize, usize)>) {
        match self {
            Splitter::Gpt2 => scan(s, base, scratch, out, scan_gpt2),
            Splitter::Llama3 => scan(s, base, scratch, out, scan_llama3),
            Splitter::Regex { re, ws_group } => split_regex(re, *ws_group, s, base, scratch, out),
        }
    }
}

#[derive(Default)]
struct Scratch {
    chars: Vec<char>,
    flags: Vec<u8>,
    offsets: Vec<usize>,
    ends: Vec<usize>,
    locs: Option<CaptureLocations>,
    // BPE merge state of one piece
    ids: Vec<Option<u32>>,
    prev: Vec<usize>,
    next: Vec<usize>,
    alive: Vec<bool>,
    heap: BinaryHeap<BpeBigram>,
}

fn split_regex(
    re: &Regex,
    ws_group: Option<usize>,
    s: &str,
    base: usize,
    scratch: &mut Scratch,
    out: &mut Vec<(usize, usize)>,
) {
    let mut pos = 0;
    while pos < s.len() {
        let (start, mut end, trim) = match ws_group {
            None => match re.find_at(s, pos) {
                Some(m) => (m.start(), m.end(), false),
                None => break,
            },
            Some(group) => {
                let locs = scratch.locs.get_or_insert_with(|| re.capture_locations());
                match re.captures_read_at(locs, s, pos) {
                    Some(m) => (m.start(), m.end(), locs.get(group).is_some()),
                    None => break,
                }
            }
        };
        if end == start {
            // No supported pattern matches the empty string; step over a char rather than loop.
            pos = start + s[start..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        // `\s+(?!\S)`: a maximal whitespace run that a non-space follows gives back its last char,
        // unless that leaves nothing (the lookahead fails then, and the pattern's `\s+` takes it).
        if trim && end < s.len() {
            let last = s[start..end].chars().next_back().map_or(0, char::len_utf8);
            if end - start > last {
                end -= last;
            }
        }
        if start > pos {
            out.push((base + pos, base + start));
        }
        out.push((base + start, base + end));
        pos = end;
    }
    if pos < s.len() {
        out.push((base + pos, base + s.len()));
    }
}

// ------------------------------------------------------------------------------------------------
// Character classes for the scanners and patterns: general categories as llama.cpp's table has
// them, and White_Space.

const F_LETTER: u8 = 1;
const F_NUMBER: u8 = 2;
const F_SPACE: u8 = 4;

struct CharClasses {
    letter: Vec<(u32, u32)>,
    number: Vec<(u32, u32)>,
}

/// llama.cpp's Unicode categories (`data/llamacpp_classes.txt`, written from its
/// `unicode-data.cpp` by tests/goldens/make_llamacpp_classes.py): its table predates Unicode 16,
/// so the regex crate's newer `\p{L}` would split letters such as U+A7CB where llama.cpp does not.
const LLAMACPP_CLASSES: &str = include_str!("data/llamacpp_classes.txt");

/// The code point ranges of category `class` (`L`, `N`, `P`, `S` or `M`) in llama.cpp's table.
fn class_ranges(class: char) -> Vec<(u32, u32)> {
    crate::util::pinned_ranges(LLAMACPP_CLASSES, class)
}

/// `pattern` with each `\p{L}`, `\p{N}`, `\p{P}`, `\p{S}` and `\p{M}` spelled as llama.cpp's
/// ranges (a bracketed class, which nests inside another).
fn pin_classes(pattern: &str) -> String {
    let mut out = pattern.to_string();
    for class in ['L', 'N', 'P', 'S', 'M'] {
        let name = format!("\\p{{{class}}}");
        if out.contains(&name) {
            let set: String = class_ranges(class).iter().map(|&(a, b)| if a == b { format!("\\x{{{a:X}}}") } else { format!("\\x{{{a:X}}}-\\x{{{b:X}}}") }).collect();
            out = out.replace(&name, &format!("[{set}]"));
        }
    }
    out
}

fn char_classes() -> &'static CharClasses {
    static CLASSES: OnceLock<CharClasses> = OnceLock::new();
    CLASSES.get_or_init(|| CharClasses {
        letter: class_ranges('L'),
        number: class_ranges('N'),
    })
}


fn char_flags(c: char, classes: &CharClasses) -> u8 {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => F_LETTER,
            '0'..='9' => F_NUMBER,
            ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r' => F_SPACE,
            _ => 0,
        };
    }
    let mut f = 0;
    if crate::util::in_ranges(&classes.letter, c as u32) {
        f |= F_LETTER;
    }
    if crate::util::in_ranges(&classes.number, c as u32) {
        f |= F_NUMBER;
    }
    if c.is_whitespace() {
        f |= F_SPACE;
    }
    f
}

/// Runs a char-level scanner over `s`; the scanner pushes piece end positions (char indices).
fn scan(
    s: &str,
    base: usize,
    scratch: &mut Scratch,
    out: &mut Vec<(usize, usize)>,
    scanner: fn(&[char], &[u8], &mut Vec<usize>),
) {
    let classes = char_classes();
    scratch.chars.clear();
    scratch.flags.clear();
    scratch.offsets.clear();
    scratch.ends.clear();
    for (i, c) in s.char_indices() {
        scratch.chars.push(c);
        scratch.flags.push(char_flags(c, classes));
        scratch.offsets.push(i);
    }
    scratch.offsets.push(s.len());
    scanner(&scratch.chars, &scratch.flags, &mut scratch.ends);
    let mut prev = 0;
    for &end in &scratch.ends {
        if end > prev {
            out.push((base + scratch.offsets[prev], base + scratch.offsets[end]));
            prev = end;
        }
    }
}

/// Helpers shared by the scanners; positions past the piece have no class at all.
struct View<'a> {
    c: &'a [char],
    f: &'a [u8],
}

impl View<'_> {
    fn has(&self, i: usize, flag: u8) -> bool {
        i < self.f.len() && self.f[i] & flag != 0
    }
    /// `[^\s\p{L}\p{N}]`
    fn other(&self, i: usize) -> bool {
        i < self.f.len() && self.f[i] & (F_LETTER | F_NUMBER | F_SPACE) == 0
    }
    /// Length of the contraction (`'s 't 'm 'd 're 've 'll`) starting at `pos`, or 0.
    fn contraction(&self, pos: usize, fold_case: bool) -> usize {
        let n = self.c.len();
        if self.c[pos] != '\'' || pos + 1 >= n {
            return 0;
        }
        let fold = |c: char| if fold_case { c.to_ascii_lowercase() } else { c };
        let a = fold(self.c[pos + 1]);
        if matches!(a, 's' | 't' | 'm' | 'd') {
            return 2;
        }
        if pos + 2 < n
            && matches!(
                (a, fold(self.c[pos + 2])),
                ('r', 'e') | ('v', 'e') | ('l', 'l')
            )
        {
            return 3;
        }
        0
    }
    /// Handles the whitespace alternatives `\s+(?!\S)|\s+` at `pos`; returns the new position.
    fn spaces(&self, pos: usize, run: usize) -> usize {
        if run > 1 && pos + run < self.c.len() {
            pos + run - 1
        } else if run > 0 {
            pos + run
        } else {
            pos + 1 // unreachable for real input: every char falls in some alternative
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn scan_gpt2(c: &[char], f: &[u8], ends: &mut Vec<usize>) {
    let v = View { c, f };
    let n = c.len();
    let mut pos = 0;
    while pos < n {
        let k = v.contraction(pos, false);
        if k > 0 {
            pos += k;
            ends.push(pos);
            continue;
        }
        let q = if c[pos] == ' ' { pos + 1 } else { pos };
        if v.has(q, F_LETTER) || v.has(q, F_NUMBER) || v.other(q) {
            let same = |i: usize| {
                if v.has(q, F_LETTER) {
                    v.has(i, F_LETTER)
                } else if v.has(q, F_NUMBER) {
                    v.has(i, F_NUMBER)
                } else {
                    v.other(i)
                }
            };
            pos = q;
            while same(pos) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        let mut run = 0;
        while v.has(pos + run, F_SPACE) {
            run += 1;
        }
        pos = v.spaces(pos, run);
        ends.push(pos);
    }
}

/// The `LLAMA3` pattern: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`,
/// ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
fn scan_llama3(c: &[char], f: &[u8], ends: &mut Vec<usize>) {
    let v = View { c, f };
    let n = c.len();
    let newline = |i: usize| i < n && (c[i] == '\r' || c[i] == '\n');
    let mut pos = 0;
    while pos < n {
        let k = v.contraction(pos, true);
        if k > 0 {
            pos += k;
            ends.push(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !newline(pos)
            && !v.has(pos, F_NUMBER)
            && (v.has(pos, F_LETTER) || v.has(pos + 1, F_LETTER))
        {
            pos += 1;
            while v.has(pos, F_LETTER) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        // \p{N}{1,3}
        if v.has(pos, F_NUMBER) {
            let mut len = 0;
            while v.has(pos, F_NUMBER) && len < 3 {
                pos += 1;
                len += 1;
            }
            ends.push(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; a lone space ending the piece also lands here, as in
        // llama.cpp, giving the piece `\s+` would give.
        let q = if c[pos] == ' ' { pos + 1 } else { pos };
        if v.other(q) || (q == n && q > pos) {
            pos = q;
            while v.other(pos) {
                pos += 1;
            }
            while newline(pos) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        // \s*[\r\n]+ takes the run up to its last newline
        let mut run = 0;
        let mut last_newline = None;
        while v.has(pos + run, F_SPACE) {
            if newline(pos + run) {
                last_newline = Some(pos + run + 1);
            }
            run += 1;
        }
        pos = match last_newline {
            Some(end) => end,
            None => v.spaces(pos, run),
        };
        ends.push(pos);
    }
}

// ------------------------------------------------------------------------------------------------
// GPT-2 byte <-> char table: printable Latin-1 bytes stand for themselves, others move to U+0100+.

fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

/// Multiply-rotate hash for the (left id, right id) merge table; SipHash dominated BPE time.
#[derive(Default, Clone, Copy)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type MergeMap = HashMap<(u32, u32), (u32, u32), BuildHasherDefault<PairHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Bpe,
    Spm,
}

enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// A merge candidate between adjacent symbols; the heap pops the lowest rank, then the leftmost.
#[derive(PartialEq, Eq)]
struct BpeBigram {
    rank: u32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
}

impl Ord for BpeBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for BpeBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A SentencePiece merge candidate; the heap pops the highest score, then the leftmost.
struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SpmBigram {}

impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

const NONE: usize = usize::MAX;

/// Tokenizer of a GGUF vocabulary. `encode` gives llama.cpp's `llama_tokenize(text,
/// add_special = false, parse_special = true)`; `decode` is lossless where llama.cpp would apply
/// its `clean_spaces` tidying. Not mirrored: the per-model LSTRIP/RSTRIP attributes of special
/// tokens (chosen by `general.name`) and the WPM, UGM and RWKV tokenizer models.
#[derive(Clone)]
pub struct Tokenizer {
    model: Model,
    pre: String,
    tokens: Vec<String>,
    kinds: Vec<Kind>,
    scores: Vec<f32>,
    token_to_id: HashMap<String, u32>,
    /// Raw bytes of each token as it is rendered.
    pieces: Vec<Vec<u8>>,
    /// Control, user-defined and unknown tokens: longest text first, then lowest id.
    special: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    // gpt2
    splitters: Vec<Splitter>,
    ignore_merges: bool,
    byte_char: [char; 256],
    char_byte: Vec<Option<u8>>,
    /// Token id of each byte's one-char byte-level string.
    byte_token: [Option<u32>; 256],
    /// (left id, right id) -> (rank, merged id)
    merges: MergeMap,
    // llama
    /// `<0xXX>` fallback token for each byte (or the byte's own one-char token, or unk).
    fallback: [Option<u32>; 256],
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("special_tokens", &self.special.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer. Fails on an unknown model or pre type, a duplicate token, a short
    /// `token_types`/`scores` array, or `add_bos` without a BOS token. Merges whose parts or
    /// result are not tokens are skipped.
    pub fn new(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        let model = match spec.model.as_str() {
            "gpt2" => Model::Bpe,
            "llama" => Model::Spm,
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() < n {
            return Err(TokenizerError::ShortArray {
                field: "token_types",
                got: spec.token_types.len(),
                tokens: n,
            });
        }
        if !spec.scores.is_empty() && spec.scores.len() < n {
            return Err(TokenizerError::ShortArray {
                field: "scores",
                got: spec.scores.len(),
                tokens: n,
            });
        }

        let mut tokens = spec.tokens;
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                // as llama.cpp does, so that every token has a distinct text
                *text = format!("[EMPTY_{i}]");
            }
            if let Some(&first) = token_to_id.get(text.as_str()) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: i as u32,
                });
            }
            token_to_id.insert(text.clone(), i as u32);
        }
        let mut kinds: Vec<Kind> = (0..n)
            .map(|i| {
                spec.token_types
                    .get(i)
                    .map_or(Kind::Normal, |&t| Kind::from_type(t))
            })
            .collect();
        for name in FORCED_CONTROL {
            if let Some(&id) = token_to_id.get(*name) {
                kinds[id as usize] = Kind::Control;
            }
        }
        let scores: Vec<f32> = (0..n)
            .map(|i| spec.scores.get(i).copied().unwrap_or(0.0))
            .collect();

        let in_vocab = |id: Option<u32>| id.filter(|&id| (id as usize) < n);
        let (default_bos, default_eos, default_unk) = match model {
            Model::Spm => (Some(1), Some(2), Some(0)),
            Model::Bpe => (Some(11), Some(11), None),
        };
        let bos = in_vocab(spec.bos.or(default_bos)).or(in_vocab(default_bos));
        let eos = in_vocab(spec.eos.or(default_eos)).or(in_vocab(default_eos));
        let unk = in_vocab(spec.unk.or(default_unk)).or(in_vocab(default_unk));
        if spec.add_bos && bos.is_none() {
            return Err(TokenizerError::MissingBos(spec.bos));
        }

        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&id| kinds[id as usize].is_special())
            .collect();
        special.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        let byte_char = byte_to_char_table();
        let mut char_byte = vec![None; 0x144];
        for (b, &c) in byte_char.iter().enumerate() {
            char_byte[c as usize] = Some(b as u8);
        }
        let mut byte_token = [None; 256];
        let mut fallback = [None; 256];
        for b in 0..256usize {
            byte_token[b] = token_to_id
                .get(byte_char[b].encode_utf8(&mut [0; 4]) as &str)
                .copied();
            let hex = format!("<0x{b:02X}>");
            fallback[b] = token_to_id
                .get(hex.as_str())
                .copied()
                .or_else(|| {
                    if b < 0x80 {
                        token_to_id
                            .get((b as u8 as char).to_string().as_str())
                            .copied()
                    } else {
                        None
                    }
                })
                .or(unk);
        }

        let pre = spec.pre.unwrap_or_default();
        let (mut splitters, mut ignore_merges, mut merges) =
            (Vec::new(), false, MergeMap::default());
        if model == Model::Bpe {
            let (patterns, ignore) =
                pre_rules(&pre).ok_or_else(|| TokenizerError::UnknownPre(pre.clone()))?;
            ignore_merges = ignore;
            for pattern in patterns {
                splitters.push(Splitter::new(pattern)?);
            }
            merges.reserve(spec.merges.len());
            for (rank, merge) in spec.merges.iter().enumerate() {
                // split at the first space after the first byte (a part may start with a space)
                let Some(cut) = merge.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else {
                    continue;
                };
                let (left, right) = (&merge[..cut], &merge[cut + 1..]);
                let (Some(&l), Some(&r)) = (token_to_id.get(left), token_to_id.get(right)) else {
                    continue;
                };
                let Some(&merged) = token_to_id.get(format!("{left}{right}").as_str()) else {
                    continue;
                };
                merges.entry((l, r)).or_insert((rank as u32, merged));
            }
        }

        let mut tokenizer = Tokenizer {
            model,
            pre,
            tokens,
            kinds,
            scores,
            token_to_id,
            pieces: Vec::new(),
            special,
            bos,
            eos,
            add_bos: spec.add_bos,
            add_space_prefix: spec.add_space_prefix,
            splitters,
            ignore_merges,
            byte_char,
            char_byte,
            byte_token,
            merges,
            fallback,
        };
        tokenizer.pieces = (0..n).map(|id| tokenizer.render(id)).collect();
        Ok(tokenizer)
    }

    /// Token ids of `text`. Control, user-defined and unknown tokens written in the text are taken
    /// as single tokens (llama.cpp's `parse_special = true`); no BOS is added.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let fragments = self.partition(text);
        let mut scratch = Scratch::default();
        // SentencePiece prefixes a space to the first text fragment and to any after a special.
        let mut after_special = true;
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(a, b) => {
                    let raw = &text[a..b];
                    match self.model {
                        Model::Bpe => self.encode_bpe(raw, &mut scratch, &mut out),
                        Model::Spm => {
                            let mut escaped = String::with_capacity(raw.len() + 3);
                            if self.add_space_prefix && after_special {
                                escaped.push('\u{2581}');
                            }
                            for c in raw.chars() {
                                escaped.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            self.encode_spm(&escaped, &mut out);
                        }
                    }
                    after_special = false;
                }
            }
        }
        out
    }

    /// Text of `ids`; special tokens appear as their text. For `llama` vocabularies the space that
    /// `encode` puts in front of each text fragment is removed again, so `decode(&encode(s)) == s`.
    /// Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let strip = self.model == Model::Spm && self.add_space_prefix;
        let mut after_special = true;
        for &id in ids {
            let Some(kind) = self.kinds.get(id as usize) else {
                continue;
            };
            let piece = self.pieces[id as usize].as_slice();
            if kind.is_special() {
                bytes.extend_from_slice(piece);
                after_special = true;
                continue;
            }
            let piece = match piece.split_first() {
                Some((b' ', rest)) if strip && after_special => rest,
                _ => piece,
            };
            bytes.extend_from_slice(piece);
            after_special = false;
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Raw bytes of one token as rendered: `▁` as a space, a byte token as its byte, a special
    /// token as its text, an unused token as nothing. A character's bytes may span tokens.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.pieces.get(id as usize).cloned().unwrap_or_default()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token's text as stored in the vocabulary (byte-level or `▁`-escaped); empty for an
    /// unknown id.
    pub fn token_str(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or("", String::as_str)
    }

    fn render(&self, id: usize) -> Vec<u8> {
        let text = &self.tokens[id];
        match self.kinds[id] {
            Kind::Unknown | Kind::Control | Kind::UserDefined => text.as_bytes().to_vec(),
            Kind::Normal => match self.model {
                Model::Spm => text.replace('\u{2581}', " ").into_bytes(),
                Model::Bpe => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        // the byte-level alphabet lies below U+0144
                        match self.char_byte.get(c as usize).copied().flatten() {
                            Some(b) => out.push(b),
                            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                    out
                }
            },
            Kind::Byte => match text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                Some(hex) if hex.len() == 2 => u8::from_str_radix(hex, 16)
                    .map_or_else(|_| text.as_bytes().to_vec(), |b| vec![b]),
                _ => text.as_bytes().to_vec(),
            },
            Kind::Unused | Kind::Undefined => Vec::new(),
        }
    }

    /// Cuts special tokens out of `text`: each special token in turn (longest first) is searched in
    /// every fragment still holding plain text, as llama.cpp's `tokenizer_st_partition` does.
    fn partition(&self, text: &str) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        // Byte pairs present in the text: a cheap way to skip most special tokens of big lists.
        let mut pairs = vec![0u64; 1024];
        for w in text.as_bytes().windows(2) {
            let k = (w[0] as usize) << 8 | w[1] as usize;
            pairs[k >> 6] |= 1 << (k & 63);
        }
        let maybe_in_text = |needle: &[u8]| {
            needle.windows(2).all(|w| {
                let k = (w[0] as usize) << 8 | w[1] as usize;
                pairs[k >> 6] >> (k & 63) & 1 == 1
            })
        };
        for &id in &self.special {
            let needle = self.tokens[id as usize].as_str();
            if !maybe_in_text(needle.as_bytes()) {
                continue;
            }
            let found = fragments
                .iter()
                .any(|f| matches!(*f, Fragment::Text(a, b) if text[a..b].contains(needle)));
            if !found {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(a, b) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut pos = a;
                while let Some(i) = text[pos..b].find(needle) {
                    if i > 0 {
                        next.push(Fragment::Text(pos, pos + i));
                    }
                    next.push(Fragment::Token(id));
                    pos += i + needle.len();
                }
                if pos < b {
                    next.push(Fragment::Text(pos, b));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Splits a text fragment into pieces by the pre-tokenizer rules, then BPE-encodes each piece.
    fn encode_bpe(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        let mut pieces = vec![(0, text.len())];
        let mut next = Vec::new();
        for splitter in &self.splitters {
            scratch.locs = None; // capture slots belong to one regex
            next.clear();
            for &(a, b) in &pieces {
                splitter.split(&text[a..b], a, scratch, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        for (a, b) in pieces {
            self.bpe_word(&text.as_bytes()[a..b], scratch, out);
        }
    }

    fn bpe_word(&self, bytes: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if bytes.is_empty() {
            return;
        }
        if self.ignore_merges || bytes.len() == 1 {
            let encoded: String = bytes.iter().map(|&b| self.byte_char[b as usize]).collect();
            if let Some(&id) = self.token_to_id.get(encoded.as_str()) {
                out.push(id);
                return;
            }
        }
        // Symbols start as one byte each, in a linked list; a merge folds the right into the left.
        let n = bytes.len();
        let Scratch {
            ids,
            prev,
            next,
            alive,
            heap,
            ..
        } = scratch;
        ids.clear();
        ids.extend(bytes.iter().map(|&b| self.byte_token[b as usize]));
        prev.clear();
        prev.extend((0..n).map(|i| if i == 0 { NONE } else { i - 1 }));
        next.clear();
        next.extend((0..n).map(|i| if i + 1 == n { NONE } else { i + 1 }));
        alive.clear();
        alive.resize(n, true);
        heap.clear();
        let push =
            |heap: &mut BinaryHeap<BpeBigram>, ids: &[Option<u32>], left: usize, right: usize| {
                if left == NONE || right == NONE {
                    return;
                }
                let (Some(l), Some(r)) = (ids[left], ids[right]) else {
                    return;
                };
                if let Some(&(rank, _)) = self.merges.get(&(l, r)) {
                    heap.push(BpeBigram {
                        rank,
                        left,
                        right,
                        left_id: l,
                        right_id: r,
                    });
                }
            };
        for i in 1..n {
            push(heap, ids, i - 1, i);
        }
        while let Some(bigram) = heap.pop() {
            let (l, r) = (bigram.left, bigram.right);
            if !alive[l]
                || !alive[r]
                || ids[l] != Some(bigram.left_id)
                || ids[r] != Some(bigram.right_id)
            {
                continue; // outdated: one side has been merged since
            }
            ids[l] = Some(self.merges[&(bigram.left_id, bigram.right_id)].1);
            alive[r] = false;
            next[l] = next[r];
            if next[l] != NONE {
                prev[next[l]] = l;
            }
            push(heap, ids, prev[l], l);
            push(heap, ids, l, next[l]);
        }
        let mut i = 0;
        while i != NONE {
            // A byte without a byte-level token is dropped, as llama.cpp does.
            if let Some(id) = ids[i] {
                out.push(id);
            }
            i = next[i];
        }
    }

    /// SentencePiece BPE on an already `▁`-escaped fragment: repeatedly merge the adjacent pair
    /// whose joined text is the highest-scoring token; characters left without a token become
    /// byte tokens.
    fn encode_spm(&self, text: &str, out: &mut Vec<u32>) {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        if n == 0 {
            return;
        }
        let mut len: Vec<usize> = (0..n)
            .map(|i| starts.get(i + 1).copied().unwrap_or(text.len()) - starts[i])
            .collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut next: Vec<usize> = (0..n)
            .map(|i| if i + 1 == n { NONE } else { i + 1 })
            .collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<SpmBigram>, len: &[usize], left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let joined = len[left] + len[right];
            if let Some(&id) = self
                .token_to_id
                .get(&text[starts[left]..starts[left] + joined])
            {
                heap.push(SpmBigram {
                    score: self.scores[id as usize],
                    left,
                    right,
                    len: joined,
                });
            }
        };
        for i in 1..n {
            push(&mut heap, &len, i - 1, i);
        }
        while let Some(bigram) = heap.pop() {
            let (l, r) = (bigram.left, bigram.right);
            if len[l] == 0 || len[r] == 0 || len[l] + len[r] != bigram.len {
                continue;
            }
            len[l] += len[r];
            len[r] = 0;
            next[l] = next[r];
            if next[l] != NONE {
                prev[next[l]] = l;
            }
            push(&mut heap, &len, prev[l], l);
            push(&mut heap, &len, l, next[l]);
        }
        let mut i = 0;
        while i != NONE {
            let piece = &text[starts[i]..starts[i] + len[i]];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.fallback[b as usize])),
            }
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level vocabulary: ids 0..=255 are the bytes, then merges, then special tokens.
    fn bpe_spec(pre: &str) -> TokenizerSpec {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        let merges = [
            "h e",
            "\u{120} t",
            "\u{120}t he",
            "l l",
            "e ll",
            "1 2",
            "\u{120} h",
            "o \u{120}",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|im_start|>".into()); // 264
        tokens.push("<|im_end|>".into()); // 265
        tokens.push("<|im".into()); // 266, user-defined, shorter than both
        let mut token_types = vec![1; tokens.len()];
        token_types[264] = 3;
        token_types[265] = 3;
        token_types[266] = 4;
        TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types,
            merges: merges.iter().map(|s| s.to_string()).collect(),
            bos: Some(264),
            eos: Some(265),
            ..Default::default()
        }
    }

    fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
        let mut scratch = Scratch::default();
        let mut pieces = vec![(0, text.len())];
        for s in &tok.splitters {
            let mut next = Vec::new();
            for &(a, b) in &pieces {
                s.split(&text[a..b], a, &mut scratch, &mut next);
            }
            pieces = next;
            scratch.locs = None;
        }
        pieces
            .iter()
            .map(|&(a, b)| text[a..b].to_string())
            .collect()
    }

    #[test]
    fn bpe_merges_by_rank() {
        let tok = Tokenizer::new(bpe_spec("gpt2")).unwrap();
        // "the": h+e (rank 0). " hello": h+e beats Ġ+h (rank 6), then l+l; "e ll" never applies.
        assert_eq!(
            tok.encode("the hello"),
            vec![b't' as u32, 256, 32, 256, 259, b'o' as u32]
        );
        // " the": h+e, then Ġ+t, then Ġt+he
        assert_eq!(tok.encode(" the"), vec![258]);
    }

    #[test]
    fn bpe_pre_tokenizers() {
        let gpt2 = Tokenizer::new(bpe_spec("gpt2")).unwrap();
        assert_eq!(
            pieces(&gpt2, "Hello world! 123  x\n\n"),
            ["Hello", " world", "!", " 123", " ", " x", "\n\n"]
        );
        assert_eq!(pieces(&gpt2, "don't  stop"), ["don", "'t", " ", " stop"]);
        // a lone space before a digit stays alone once digits are cut out first
        let smollm = Tokenizer::new(bpe_spec("smollm")).unwrap();
        assert_eq!(
            pieces(&smollm, "Hello world! 123"),
            ["Hello", " world", "!", " ", "1", "2", "3"]
        );
        assert_eq!(gpt2.encode(" 12"), vec![32, 261]);
        assert_eq!(smollm.encode(" 12"), vec![32, 49, 50]);
        let llama3 = Tokenizer::new(bpe_spec("llama-bpe")).unwrap();
        assert_eq!(
            pieces(&llama3, "I'LL pay 12345 now!!\n\n  ok  "),
            [
                "I", "'LL", " pay", " ", "123", "45", " now", "!!\n\n", " ", " ok", "  "
            ]
        );
        let qwen2 = Tokenizer::new(bpe_spec("qwen2")).unwrap();
        assert_eq!(
            pieces(&qwen2, "x  123\t\ty"),
            ["x", " ", " ", "1", "2", "3", "\t", "\ty"]
        );
        let err = Tokenizer::new(bpe_spec("no-such-pre")).unwrap_err();
        assert_eq!(err.to_string(), "unknown pre-tokenizer type: 'no-such-pre'");
    }

    #[test]
    fn every_pre_type_compiles() {
        for pre in [
            "default",
            "gpt2",
            "smollm",
            "llama-bpe",
            "dbrx",
            "qwen2",
            "qwen35",
            "seed-coder",
            "bailingmoe",
            "minicpm5",
            "tekken",
            "gpt-4o",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "bloom",
            "viking",
        ] {
            let tok = Tokenizer::new(bpe_spec(pre)).unwrap();
            let s = "Hi  there, 12345 'LL\n\n\u{4E2D}\u{6587} caf\u{E9}!";
            assert_eq!(tok.decode(&tok.encode(s)), s, "{pre}");
            assert_eq!(pieces(&tok, s).concat(), s, "{pre}");
        }
    }

    #[test]
    fn letters_and_numbers_are_llama_cpps() {
        // Unicode 16 made U+A7CB a letter and U+1CCF0 a digit; llama.cpp's table has neither
        let c = char_classes();
        for (ch, flags) in [('a', F_LETTER), ('é', F_LETTER), ('中', F_LETTER), ('٣', F_NUMBER), ('\u{a7cb}', 0), ('\u{1ccf0}', 0), ('\u{13460}', 0)] {
            assert_eq!(char_flags(ch, c) & (F_LETTER | F_NUMBER), flags, "{ch:?}");
        }
        let letter = Regex::new(&pin_classes(r"^[^\s\p{N}]\p{L}+$")).unwrap();
        assert!(letter.is_match("xab") && !letter.is_match("x\u{a7cb}") && !letter.is_match("1ab"));
    }

    #[test]
    fn scanners_agree_with_regex_emulation() {
        let samples = [
            "Hello world",
            "  leading",
            "trailing   ",
            "a  b   c",
            "x\n\n y",
            "\t\tz",
            "don't DON'T it's 'll'",
            "123456 7",
            "3.14 and 2,718",
            "émoji 😀 ok",
            "中文 and 日本語",
            "a\u{3000}\u{3000}b",
            "\u{85}x\u{a0}\u{a0}y",
            "!!! ??? ...",
            " !x",
            "x\r\n\r\ny",
            "   \n  \n  w",
            "' '  '",
            "Ⅻ²³ ½",
            "tab\t",
            "end ",
            "  ",
            " ",
            "CamelCase_snake",
            "a\u{301}b",
            "\u{200b}zero width",
            "x  \ny",
            "'S'T'Re",
            "\r\r  \r",
        ];
        for (scanner, pattern) in [(Splitter::Gpt2, GPT2), (Splitter::Llama3, LLAMA3)] {
            let translated = pin_classes(&pattern.replacen(WS_LOOKAHEAD, r"(?P<ws>\s+)", 1));
            let re = Regex::new(&translated).unwrap();
            let ws_group = re.capture_names().position(|n| n == Some("ws"));
            let generic = Splitter::Regex { re, ws_group };
            for s in samples {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut scratch = Scratch::default();
                scanner.split(s, 0, &mut scratch, &mut a);
                scratch.locs = None;
                generic.split(s, 0, &mut scratch, &mut b);
                assert_eq!(a, b, "{pattern} on {s:?}");
            }
        }
    }

    #[test]
    fn bpe_special_tokens_and_roundtrip() {
        let tok = Tokenizer::new(bpe_spec("smollm")).unwrap();
        assert_eq!(tok.encode("<|im_start|>he<|im_end|>"), vec![264, 256, 265]);
        // longest special token first, wherever it is: "<|im" only gets what "<|im_start|>" left
        assert_eq!(tok.encode("<|im<|im_start|>"), vec![266, 264]);
        assert_eq!(tok.encode("<|im_start|><|im"), vec![264, 266]);
        assert_eq!(tok.encode(""), Vec::<u32>::new());
        for s in [
            "<|im_start|>user\nHi<|im_end|>\n",
            "naïve café 😀 中文",
            "  x  \t\n",
            "<|im",
            "1234 56",
        ] {
            assert_eq!(tok.decode(&tok.encode(s)), s);
        }
        assert_eq!(tok.token_bytes(32), b" ".to_vec());
        assert_eq!(tok.token_bytes(264), b"<|im_start|>".to_vec());
        assert_eq!(tok.token_str(257), "\u{120}t");
        assert_eq!(tok.token_bytes(257), b" t".to_vec());
        assert_eq!(
            (tok.bos(), tok.eos(), tok.vocab_size(), tok.add_bos()),
            (Some(264), Some(265), 267, false)
        );
    }

    /// SentencePiece vocabulary with byte fallback; scores decide the merge order.
    fn spm_spec() -> TokenizerSpec {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u32 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        // ids from 259 on
        let normal = [
            ("\u{2581}", -5.0),         // 259
            ("h", -5.0),                // 260
            ("e", -5.0),                // 261
            ("l", -5.0),                // 262
            ("o", -5.0),                // 263
            ("he", -3.0),               // 264
            ("ll", -2.0),               // 265
            ("hell", -1.0),             // 266
            ("\u{2581}hell", -4.0),     // 267
            ("a", -5.0),                // 268
            ("aa", -1.0),               // 269
            ("\u{2581}\u{2581}", -6.0), // 270
            ("\u{2581}a", -7.0),        // 271
        ];
        for (t, s) in normal {
            tokens.push(t.into());
            types.push(1);
            scores.push(s);
        }
        TokenizerSpec {
            model: "llama".into(),
            tokens,
            token_types: types,
            scores,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
            add_space_prefix: true,
            ..Default::default()
        }
    }

    #[test]
    fn spm_merges_by_score() {
        let tok = Tokenizer::new(spm_spec()).unwrap();
        // "▁hello": ll (-2) first, then he (-3), then hell (-1), then ▁hell (-4); "o" stays.
        assert_eq!(tok.encode("hello"), vec![267, 263]);
        // equal scores: the leftmost pair merges first -> "aa" + "a" ("▁a" scores only -7)
        assert_eq!(tok.encode("aaa"), vec![259, 269, 268]);
        // byte fallback: 'é' is not a token -> its two UTF-8 bytes; 'z' neither -> <0x7A>
        assert_eq!(
            tok.encode("é z"),
            vec![259, 3 + 0xC3, 3 + 0xA9, 259, 3 + 0x7A]
        );
        // a special token resets the space prefix for the text after it
        assert_eq!(tok.encode("<s>hello</s>"), vec![1, 267, 263, 2]);
        // ▁hell (-4) is taken before ▁▁ (-6)
        assert_eq!(tok.encode(" hello"), vec![259, 267, 263]);
    }

    #[test]
    fn spm_decode_roundtrip() {
        let tok = Tokenizer::new(spm_spec()).unwrap();
        for s in [
            "hello",
            " hello",
            "aaa  é",
            "<s>hello</s> oh",
            "",
            "  ",
            "<unk>x",
        ] {
            assert_eq!(tok.decode(&tok.encode(s)), s, "{s:?}");
        }
        assert_eq!(tok.token_bytes(267), b" hell".to_vec());
        assert_eq!(tok.token_bytes(3 + 0xC3), vec![0xC3]);
        assert_eq!(tok.token_bytes(1), b"<s>".to_vec());
        // the leading space of the first piece is dropped
        assert_eq!(tok.decode(&[267, 263]), "hello");
        assert!(tok.add_bos());
    }

    #[test]
    fn spec_errors() {
        let mut spec = spm_spec();
        spec.model = "bert".into();
        assert_eq!(
            Tokenizer::new(spec).unwrap_err().to_string(),
            "unknown tokenizer model: 'bert' (supported: 'gpt2', 'llama')"
        );
        let mut spec = spm_spec();
        spec.tokens[5] = "h".into();
        assert!(matches!(
            Tokenizer::new(spec),
            Err(TokenizerError::DuplicateToken {
                first: 5,
                second: 260,
                ..
            })
        ));
        let mut spec = spm_spec();
        spec.token_types.truncate(3);
        assert!(matches!(
            Tokenizer::new(spec),
            Err(TokenizerError::ShortArray {
                field: "token_types",
                got: 3,
                ..
            })
        ));
        let mut spec = bpe_spec("gpt2");
        spec.bos = None;
        spec.add_bos = true;
        spec.tokens.truncate(11); // no default id 11 either
        spec.token_types.truncate(11);
        let err = Tokenizer::new(spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "add_bos is true, but there is no bos token (bos id: unset)"
        );
    }

    #[test]
    fn tokenizer_is_shareable() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Tokenizer>();
    }
}
