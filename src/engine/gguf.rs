//! GGUF v2/v3 reader over a read-only memory map. The header is parsed eagerly by a bounds-checked
//! cursor that checks every count and length against the bytes left in the file before allocating,
//! so a damaged file ends in a [`GgufError`] having allocated no more than the values it really holds;
//! tensor data is never copied out of the map.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted; real files use at most one level.
pub const MAX_ARRAY_DEPTH: usize = 16;
/// Most metadata array elements accepted from one file, all arrays together. Large vocabularies hold
/// a few hundred thousand; the cap bounds what a file of one-byte elements (32 bytes of memory
/// each) can make us allocate.
pub const MAX_META_VALUES: usize = 1 << 24;

/// A metadata value. Arrays hold elements of one type, possibly arrays themselves.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float or integer (integers above 2^53 round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// The tensor encodings this engine can dequantize (ids as in ggml's `enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes holding `n` elements; `n` should be a multiple of [`block_size`](Self::block_size)
    /// (a partial block counts as whole). Saturates instead of overflowing.
    pub fn row_bytes(self, n: usize) -> usize {
        n.div_ceil(self.block_size()).saturating_mul(self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of the ggml types this reader knows of but cannot decode, for error messages.
fn other_ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the contiguous row length.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data.
    pub bytes: usize,
}

impl TensorInfo {
    /// Number of elements (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> usize {
        // Checked at open; saturating only guards hand-built values.
        self.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    /// Length of one row (`dims[0]`, or 1 with no dimensions).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{file}: cannot read: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not a GGUF file (magic {magic}, expected \"GGUF\")")]
    NotGguf { file: String, magic: String },
    #[error("{file}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { file: String, version: u32 },
    #[error("{file}: big-endian GGUF files are not supported")]
    BigEndian { file: String },
    #[error(
        "{file}: truncated at byte {at} while reading {what} (needs at least {need} bytes; file is {len} bytes)"
    )]
    Truncated { file: String, at: usize, what: String, need: u64, len: usize },
    #[error("{file}: unknown tensor type {id} for tensor '{tensor}' (tensor info {index} at byte {at})")]
    UnknownTensorType { file: String, id: u32, tensor: String, index: usize, at: usize },
    #[error(
        "{file}: unsupported tensor type {name} (id {id}) for tensor '{tensor}' (tensor info {index} at byte {at})"
    )]
    UnsupportedTensorType {
        file: String,
        id: u32,
        name: &'static str,
        tensor: String,
        index: usize,
        at: usize,
    },
    /// Any other malformed field: `what` names the field, `at` where it starts.
    #[error("{file}: {what} at byte {at}: {problem}")]
    Invalid { file: String, at: usize, what: String, problem: String },
}

/// A parsed GGUF file; tensor data is read in place from the map.
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    alignment: usize,
    data_offset: usize,
    map: Option<Mmap>,
    path: PathBuf,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let file_name = path.display().to_string();
        let io = |source| GgufError::Io { file: file_name.clone(), source };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory")));
        }
        let len = meta.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only. Like every mmap reader (llama.cpp included) we rely on
            // the file not being truncated or rewritten by another process while it is mapped.
            Some(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let header = parse(map.as_deref().unwrap_or(&[]), &file_name)?;
        Ok(Gguf {
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
            map,
            path: path.to_path_buf(),
        })
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's bytes. Every `TensorInfo` from this file is in bounds (checked at open); one
    /// that is not (built by hand, or from another file) gets an empty slice.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let all = self.map.as_deref().unwrap_or(&[]);
        t.offset.checked_add(t.bytes).and_then(|end| all.get(t.offset..end)).unwrap_or(&[])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Alignment of the data section and of each tensor's offset within it.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute offset of the data section (tensor offsets in the file are relative to it).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.map.as_deref().map_or(0, <[u8]>::len)
    }
}

/// What [`parse`] extracts from the bytes; [`Gguf`] adds the map and path.
struct Header {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    alignment: usize,
    data_offset: usize,
}

/// A cursor-level failure, given its context (`what`) by the caller.
enum Fault {
    /// `need` bytes were wanted at `at` but the file ends first.
    Short {
        at: usize,
        need: u64,
    },
    Bad {
        at: usize,
        problem: String,
    },
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements still allowed (see [`MAX_META_VALUES`]).
    budget: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Fault> {
        let at = self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => {
                self.pos += n;
                Ok(&self.buf[at..at + n])
            }
            _ => Err(Fault::Short { at, need: n }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let b = self.take(N as u64)?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Fault> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Fault> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Fault> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String, Fault> {
        let at = self.pos;
        let n = self.u64()?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(Fault::Bad {
                at,
                problem: format!("invalid UTF-8 at byte {} of a {n}-byte string", e.valid_up_to()),
            }),
        }
    }

    /// Checks that `count` items of at least `min` bytes each can still fit, before allocating.
    fn fits(&self, count: u64, min: u64) -> Result<usize, Fault> {
        match usize::try_from(count.saturating_mul(min)) {
            Ok(n) if n <= self.left() => Ok(count as usize),
            _ => Err(Fault::Short { at: self.pos, need: count.saturating_mul(min) }),
        }
    }

    fn spend(&mut self, n: usize) -> Result<(), Fault> {
        match self.budget.checked_sub(n) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => Err(Fault::Bad {
                at: self.pos,
                problem: format!("metadata arrays hold more than {MAX_META_VALUES} elements in all"),
            }),
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, Fault> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8()?),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::Str(self.string()?),
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            9 => {
                let at = self.pos;
                let elem = self.u32()?;
                let count = self.u64()?;
                let Some(min) = min_value_bytes(elem) else {
                    return Err(Fault::Bad { at, problem: format!("unknown array element type {elem}") });
                };
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Fault::Bad {
                        at,
                        problem: format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
                    });
                }
                let count = self.fits(count, min)?;
                self.spend(count)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            _ => {
                return Err(Fault::Bad { at: self.pos - 4, problem: format!("unknown value type {ty}") });
            }
        })
    }
}

/// Smallest encoding of a value of type `ty`, or None for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,  // length
        9 => 12, // element type + count
        _ => return None,
    })
}

fn parse(buf: &[u8], file: &str) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0, budget: MAX_META_VALUES };
    let fail = |f: Fault, what: &dyn Fn() -> String| match f {
        Fault::Short { at, need } => {
            GgufError::Truncated { file: file.to_owned(), at, what: what(), need, len: buf.len() }
        }
        Fault::Bad { at, problem } => GgufError::Invalid { file: file.to_owned(), at, what: what(), problem },
    };
    let invalid = |at: usize, what: String, problem: String| GgufError::Invalid {
        file: file.to_owned(),
        at,
        what,
        problem,
    };

    if buf.len() < 4 || &buf[..4] != b"GGUF" {
        let head = &buf[..buf.len().min(4)];
        let magic = format!("\"{}\"", head.escape_ascii());
        return Err(GgufError::NotGguf { file: file.to_owned(), magic });
    }
    c.pos = 4;
    let version = c.u32().map_err(|f| fail(f, &|| "the version".into()))?;
    if (2..=3).contains(&version.swap_bytes()) {
        return Err(GgufError::BigEndian { file: file.to_owned() });
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { file: file.to_owned(), version });
    }
    let n_tensors = c.u64().map_err(|f| fail(f, &|| "the tensor count".into()))?;
    let n_kv = c.u64().map_err(|f| fail(f, &|| "the metadata count".into()))?;

    // Key length + value type + one value byte.
    let n_kv = c.fits(n_kv, 13).map_err(|f| fail(f, &|| format!("{n_kv} metadata entries")))?;
    let mut metadata = Vec::with_capacity(n_kv);
    let mut kv_at = Vec::with_capacity(n_kv);
    let mut keys = HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string().map_err(|f| fail(f, &|| format!("metadata key {i}")))?;
        let what = || format!("metadata value {i} ('{key}')");
        let ty = c.u32().map_err(|f| fail(f, &what))?;
        let value = c.value(ty, 0).map_err(|f| fail(f, &what))?;
        if !keys.insert(key.clone()) {
            return Err(invalid(at, format!("metadata key {i}"), format!("duplicate key '{key}'")));
        }
        metadata.push((key, value));
        kv_at.push(at);
    }

    let mut alignment = DEFAULT_ALIGNMENT;
    if let Some(i) = metadata.iter().position(|(k, _)| k == "general.alignment") {
        let what = || "metadata 'general.alignment'".to_owned();
        match metadata[i].1 {
            MetaValue::U32(a) if a.is_power_of_two() => alignment = a as usize,
            MetaValue::U32(a) => {
                return Err(invalid(kv_at[i], what(), format!("{a} is not a power of two")));
            }
            ref v => {
                return Err(invalid(kv_at[i], what(), format!("must be a u32, not {}", v.type_name())));
            }
        }
    }

    // Name length + dim count + type + offset.
    let n_tensors = c.fits(n_tensors, 24).map_err(|f| fail(f, &|| format!("{n_tensors} tensor infos")))?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut info_at = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos;
        let what = || format!("tensor info {i}");
        let name = c.string().map_err(|f| fail(f, &what))?;
        let what = || format!("tensor info {i} ('{name}')");
        let n_dims = c.u32().map_err(|f| fail(f, &what))?;
        if n_dims as usize > MAX_DIMS {
            return Err(invalid(at, what(), format!("{n_dims} dimensions (at most {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64().map_err(|f| fail(f, &what))?;
            // ggml stores dims as i64.
            match usize::try_from(d) {
                Ok(d) if d <= i64::MAX as usize => dims.push(d),
                _ => return Err(invalid(at, what(), format!("dimension {d} is too large"))),
            }
        }
        let id = c.u32().map_err(|f| fail(f, &what))?;
        let rel = c.u64().map_err(|f| fail(f, &what))?;
        let Some(ty) = GgmlType::from_id(id) else {
            return Err(match other_ggml_type_name(id) {
                Some(type_name) => GgufError::UnsupportedTensorType {
                    file: file.to_owned(),
                    id,
                    name: type_name,
                    tensor: name,
                    index: i,
                    at,
                },
                None => {
                    GgufError::UnknownTensorType { file: file.to_owned(), id, tensor: name, index: i, at }
                }
            });
        };
        let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d).filter(|&n| n <= i64::MAX as usize));
        let Some(n) = n else {
            return Err(invalid(at, what(), format!("dimensions {dims:?} overflow the element count")));
        };
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size()) {
            return Err(invalid(
                at,
                what(),
                format!("row length {row} is not a multiple of the {ty} block size {}", ty.block_size()),
            ));
        }
        let Some(bytes) = (n / ty.block_size()).checked_mul(ty.block_bytes()) else {
            return Err(invalid(at, what(), format!("{n} {ty} elements overflow the byte count")));
        };
        if !rel.is_multiple_of(alignment as u64) {
            return Err(invalid(
                at,
                what(),
                format!("data offset {rel} is not a multiple of the alignment {alignment}"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(at, what(), "duplicate tensor name".into()));
        }
        // Made absolute below, once the data section's start is known.
        let offset = usize::try_from(rel).unwrap_or(usize::MAX);
        tensors.push(TensorInfo { name, dims, ty, offset, bytes });
        info_at.push(at);
    }

    let data_offset = c.pos.checked_next_multiple_of(alignment).unwrap_or(usize::MAX);
    for (i, t) in tensors.iter_mut().enumerate() {
        // u128: neither sum can overflow, so the message can show the true range.
        let start = data_offset as u128 + t.offset as u128;
        let end = start + t.bytes as u128;
        if end > buf.len() as u128 {
            let problem =
                format!("data bytes {start}..{end} run past the end of the file ({} bytes)", buf.len());
            return Err(invalid(info_at[i], format!("tensor info {i} ('{}')", t.name), problem));
        }
        t.offset = start as usize;
    }

    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds GGUF files byte by byte; each method appends one field.
    #[derive(Default)]
    struct Writer {
        buf: Vec<u8>,
    }

    impl Writer {
        fn u32(&mut self, v: u32) -> &mut Self {
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.buf.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64);
            self.buf.extend_from_slice(s.as_bytes());
            self
        }
        fn header(&mut self, version: u32, n_tensors: u64, n_kv: u64) -> &mut Self {
            self.buf.extend_from_slice(b"GGUF");
            self.u32(version).u64(n_tensors).u64(n_kv)
        }
        fn type_id(v: &MetaValue) -> u32 {
            match v {
                MetaValue::U8(_) => 0,
                MetaValue::I8(_) => 1,
                MetaValue::U16(_) => 2,
                MetaValue::I16(_) => 3,
                MetaValue::U32(_) => 4,
                MetaValue::I32(_) => 5,
                MetaValue::F32(_) => 6,
                MetaValue::Bool(_) => 7,
                MetaValue::Str(_) => 8,
                MetaValue::Array(_) => 9,
                MetaValue::U64(_) => 10,
                MetaValue::I64(_) => 11,
                MetaValue::F64(_) => 12,
            }
        }
        /// Value without its type tag. Empty arrays are written as arrays of u8.
        fn value(&mut self, v: &MetaValue) -> &mut Self {
            let b = &mut self.buf;
            match v {
                MetaValue::U8(x) => b.push(*x),
                MetaValue::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
                MetaValue::Bool(x) => b.push(*x as u8),
                MetaValue::Str(s) => {
                    self.str(s);
                }
                MetaValue::Array(items) => {
                    self.u32(items.first().map_or(0, Self::type_id)).u64(items.len() as u64);
                    for it in items {
                        self.value(it);
                    }
                }
            }
            self
        }
        fn kv(&mut self, key: &str, v: &MetaValue) -> &mut Self {
            self.str(key).u32(Self::type_id(v)).value(v)
        }
        fn tensor_info(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
            self.str(name).u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty).u64(offset)
        }
        fn pad(&mut self, align: usize) -> &mut Self {
            self.buf.resize(self.buf.len().next_multiple_of(align), 0);
            self
        }
    }

    fn all_values() -> Vec<(String, MetaValue)> {
        use MetaValue::*;
        let v = vec![
            U8(200),
            I8(-5),
            U16(60000),
            I16(-30000),
            U32(4_000_000_000),
            I32(-2_000_000_000),
            U64(u64::MAX),
            I64(i64::MIN),
            F32(1.5),
            F64(-2.25e300),
            Bool(true),
            Bool(false),
            Str("héllo ✓".into()),
            Str(String::new()),
            Array(vec![I32(1), I32(-2), I32(3)]),
            Array(vec![Str("a".into()), Str("".into()), Str("ccc".into())]),
            Array(vec![Array(vec![U8(1), U8(2)]), Array(vec![]), Array(vec![U8(3)])]),
            Array(vec![]),
            Array(vec![F64(0.5), F64(f64::INFINITY)]),
        ];
        v.into_iter().enumerate().map(|(i, v)| (format!("test.{}.{}", i, v.type_name()), v)).collect()
    }

    /// A small valid file: all value types and three tensors (F32 2x3, Q8_0 32x2, Q4_K 256).
    fn sample(version: u32, alignment: Option<u32>) -> (Vec<u8>, Vec<(String, MetaValue)>) {
        let mut meta = all_values();
        if let Some(a) = alignment {
            meta.push(("general.alignment".into(), MetaValue::U32(a)));
        }
        let align = alignment.unwrap_or(32) as usize;
        let mut w = Writer::default();
        w.header(version, 3, meta.len() as u64);
        for (k, v) in &meta {
            w.kv(k, v);
        }
        let b = 24usize.next_multiple_of(align);
        let c = (b + 68).next_multiple_of(align);
        w.tensor_info("a.weight", &[3, 2], 0, 0);
        w.tensor_info("b.q8", &[32, 2], 8, b as u64);
        w.tensor_info("c.q4k", &[256], 12, c as u64);
        w.pad(align);
        let start = w.buf.len();
        w.buf.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
        w.buf.resize(start + b, 0);
        w.buf.extend((0..68).map(|i| i as u8));
        w.buf.resize(start + c, 0);
        w.buf.extend((0..144).map(|i| (i * 7) as u8));
        (w.buf, meta)
    }

    fn parse_ok(buf: &[u8]) -> Header {
        match parse(buf, "t.gguf") {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_err(buf: &[u8]) -> String {
        match parse(buf, "t.gguf") {
            Ok(_) => panic!("parsed"),
            Err(e) => e.to_string(),
        }
    }

    /// A file in the temp dir, removed on drop.
    struct TmpFile(PathBuf);

    impl TmpFile {
        fn new(name: &str, bytes: &[u8]) -> TmpFile {
            let p = std::env::temp_dir().join(format!("llmeval-gguf-{}-{name}", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            TmpFile(p)
        }
    }

    impl Drop for TmpFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn round_trip_v2_v3_and_alignment() {
        for (version, alignment) in [(3, None), (2, None), (3, Some(64)), (3, Some(1)), (2, Some(8))] {
            let (buf, meta) = sample(version, alignment);
            let f = TmpFile::new(&format!("rt{version}-{alignment:?}.gguf"), &buf);
            let g = Gguf::open(&f.0).unwrap();
            assert_eq!(g.version, version);
            assert_eq!(g.metadata, meta);
            assert_eq!(g.alignment(), alignment.unwrap_or(32) as usize);
            assert_eq!(g.data_offset() % g.alignment(), 0);
            assert_eq!(g.path(), f.0);
            assert_eq!(g.file_len(), buf.len());
            let a = g.tensor("a.weight").unwrap();
            assert_eq!((a.dims.clone(), a.ty, a.bytes, a.n_elements()), (vec![3, 2], GgmlType::F32, 24, 6));
            assert_eq!(a.offset, g.data_offset());
            let floats: Vec<f32> =
                g.data(a).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            assert_eq!(floats, [0., 1., 2., 3., 4., 5.]);
            let b = g.tensor("b.q8").unwrap();
            assert_eq!((b.ty, b.bytes, b.offset % g.alignment()), (GgmlType::Q8_0, 68, 0));
            assert_eq!(g.data(b), (0..68).map(|i| i as u8).collect::<Vec<_>>());
            let c = g.tensor("c.q4k").unwrap();
            assert_eq!((c.ty, c.bytes), (GgmlType::Q4K, 144));
            assert_eq!(g.data(c)[1], 7);
            assert!(g.tensor("nope").is_none());
            assert_eq!(g.meta("test.6.u64").and_then(MetaValue::as_u64), Some(u64::MAX));
            assert!(g.meta("missing").is_none());
        }
    }

    #[test]
    fn accessors() {
        use MetaValue::*;
        assert_eq!(I8(-1).as_u64(), None);
        assert_eq!(I32(7).as_u64(), Some(7));
        assert_eq!(U64(u64::MAX).as_i64(), None);
        assert_eq!(U32(7).as_i64(), Some(7));
        assert_eq!(F32(0.5).as_f64(), Some(0.5));
        assert_eq!(I16(-3).as_f64(), Some(-3.0));
        assert_eq!(Str("x".into()).as_str(), Some("x"));
        assert_eq!(Str("x".into()).as_u64(), None);
        assert_eq!(Bool(true).as_bool(), Some(true));
        assert_eq!(U8(1).as_bool(), None);
        assert_eq!(Array(vec![U8(1)]).as_array(), Some(&[U8(1)][..]));
        assert_eq!(F64(1.0).type_name(), "f64");
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.row_bytes(t.block_size() * 3), t.block_bytes() * 3);
        }
        assert_eq!(GgmlType::from_id(10), None);
        assert_eq!(GgmlType::Q4_1.name(), "Q4_1");
        assert_eq!(GgmlType::Q6K.to_string(), "Q6_K");
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), usize::MAX);
        assert_eq!(GgmlType::Q4_0.row_bytes(33), 36);
    }

    #[test]
    fn empty_and_tiny_files() {
        let f = TmpFile::new("empty.gguf", b"");
        let e = Gguf::open(&f.0).unwrap_err().to_string();
        assert!(e.contains("empty.gguf: not a GGUF file (magic \"\""), "{e}");
        assert!(parse_err(b"GGU").contains("not a GGUF file"));
        assert!(parse_err(b"\x7fELF\x02\x01").contains(r#"magic "\x7fELF""#));
        let e = Gguf::open(&std::env::temp_dir()).unwrap_err().to_string();
        assert!(e.ends_with(": cannot read: is a directory"), "{e}");
        let e = Gguf::open(Path::new("/nonexistent/x.gguf")).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/x.gguf: cannot read:"), "{e}");
    }

    #[test]
    fn header_errors() {
        let mut w = Writer::default();
        w.header(1, 0, 0);
        assert_eq!(parse_err(&w.buf), "t.gguf: unsupported GGUF version 1 (supported: 2, 3)");
        let mut w = Writer::default();
        w.buf.extend_from_slice(b"GGUF");
        w.buf.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(parse_err(&w.buf), "t.gguf: big-endian GGUF files are not supported");
        let e = parse_err(b"GGUF\x03\x00\x00\x00\x00");
        assert_eq!(
            e,
            "t.gguf: truncated at byte 8 while reading the tensor count (needs at least 8 bytes; file is 9 bytes)"
        );
        // A header with no metadata and no tensors is valid.
        let mut w = Writer::default();
        w.header(3, 0, 0);
        let h = parse_ok(&w.buf);
        assert!(h.metadata.is_empty() && h.tensors.is_empty());
        assert_eq!(h.data_offset, 32);
    }

    #[test]
    fn absurd_counts_and_lengths() {
        // Counts far beyond the file.
        let mut w = Writer::default();
        w.header(3, 0, 1 << 60);
        let e = parse_err(&w.buf);
        assert!(e.contains("truncated at byte 24 while reading 1152921504606846976 metadata entries"), "{e}");
        let mut w = Writer::default();
        w.header(3, u64::MAX, 0);
        assert!(parse_err(&w.buf).contains("while reading 18446744073709551615 tensor infos"));
        // String length 2^60.
        let mut w = Writer::default();
        w.header(3, 0, 1).u64(1 << 60).u32(4).u64(0);
        let e = parse_err(&w.buf);
        assert!(
            e.contains(
                "truncated at byte 32 while reading metadata key 0 (needs at least 1152921504606846976 bytes"
            ),
            "{e}"
        );
        // String value of length u64::MAX.
        let mut w = Writer::default();
        w.header(3, 0, 1).str("k").u32(8).u64(u64::MAX).u64(0);
        let e = parse_err(&w.buf);
        assert!(
            e.contains("while reading metadata value 0 ('k') (needs at least 18446744073709551615 bytes"),
            "{e}"
        );
        // Array count beyond the file, for each element size.
        for elem in [0u32, 4, 8, 9, 12] {
            let mut w = Writer::default();
            w.header(3, 0, 1).str("arr").u32(9).u32(elem).u64(1 << 40).u64(0);
            let e = parse_err(&w.buf);
            assert!(e.contains("while reading metadata value 0 ('arr')"), "{e}");
            assert!(e.starts_with("t.gguf: truncated at byte 51 "), "{e}");
        }
        // Deeply nested empty-ish arrays.
        let mut w = Writer::default();
        w.header(3, 0, 1).str("deep").u32(9);
        for _ in 0..100 {
            w.u32(9).u64(1);
        }
        w.u32(0).u64(0);
        let e = parse_err(&w.buf);
        assert!(e.contains("arrays nested more than 16 deep"), "{e}");
        // Unknown value types, at top level and inside an array.
        let mut w = Writer::default();
        w.header(3, 0, 1).str("k").u32(13).u64(0);
        assert_eq!(parse_err(&w.buf), "t.gguf: metadata value 0 ('k') at byte 33: unknown value type 13");
        let mut w = Writer::default();
        w.header(3, 0, 1).str("k").u32(9).u32(77).u64(0);
        assert_eq!(
            parse_err(&w.buf),
            "t.gguf: metadata value 0 ('k') at byte 37: unknown array element type 77"
        );
    }

    #[test]
    fn meta_value_budget() {
        // Within the file size but above MAX_META_VALUES.
        let n = MAX_META_VALUES + 1;
        let mut w = Writer::default();
        w.header(3, 0, 1).str("big").u32(9).u32(0).u64(n as u64);
        w.buf.resize(w.buf.len() + n, 0);
        assert!(parse_err(&w.buf).contains("metadata arrays hold more than 16777216 elements in all"));
    }

    #[test]
    fn metadata_errors() {
        let mut w = Writer::default();
        w.header(3, 0, 1).u64(2).buf.extend_from_slice(&[0xff, 0xfe]);
        w.u32(0).buf.push(0);
        let e = parse_err(&w.buf);
        assert_eq!(e, "t.gguf: metadata key 0 at byte 24: invalid UTF-8 at byte 0 of a 2-byte string");
        let mut w = Writer::default();
        w.header(3, 0, 2).kv("k", &MetaValue::U8(1)).kv("k", &MetaValue::U8(2));
        assert_eq!(parse_err(&w.buf), "t.gguf: metadata key 1 at byte 38: duplicate key 'k'");
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("general.alignment", &MetaValue::U32(24));
        assert_eq!(
            parse_err(&w.buf),
            "t.gguf: metadata 'general.alignment' at byte 24: 24 is not a power of two"
        );
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("general.alignment", &MetaValue::U32(0));
        assert!(parse_err(&w.buf).contains("0 is not a power of two"));
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("general.alignment", &MetaValue::U64(32));
        assert!(parse_err(&w.buf).ends_with("'general.alignment' at byte 24: must be a u32, not u64"));
    }

    /// One-tensor file; `data` bytes follow the aligned header.
    fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
        let mut w = Writer::default();
        w.header(3, 1, 0).tensor_info("blk.0.attn_q.weight", dims, ty, offset).pad(32);
        w.buf.resize(w.buf.len() + data, 0);
        w.buf
    }

    #[test]
    fn tensor_errors() {
        let h = parse_ok(&one_tensor(&[32, 4], 2, 0, 72));
        assert_eq!((h.tensors[0].bytes, h.tensors[0].offset), (72, 96));
        // Zero-dimensional and zero-sized tensors are fine.
        assert_eq!(parse_ok(&one_tensor(&[], 0, 0, 4)).tensors[0].bytes, 4);
        assert_eq!(parse_ok(&one_tensor(&[0, 5], 12, 0, 0)).tensors[0].bytes, 0);

        let e = parse_err(&one_tensor(&[32], 99, 0, 64));
        assert_eq!(
            e,
            "t.gguf: unknown tensor type 99 for tensor 'blk.0.attn_q.weight' (tensor info 0 at byte 24)"
        );
        let e = parse_err(&one_tensor(&[256], 11, 0, 256));
        assert!(e.contains("unsupported tensor type Q3_K (id 11) for tensor 'blk.0.attn_q.weight'"), "{e}");
        let e = parse_err(&one_tensor(&[32, 4], 2, 0, 71));
        assert_eq!(
            e,
            "t.gguf: tensor info 0 ('blk.0.attn_q.weight') at byte 24: data bytes 96..168 run past the end of \
             the file (167 bytes)"
        );
        let e = parse_err(&one_tensor(&[32], 0, u64::MAX - 31, 0));
        assert!(e.ends_with("data bytes 18446744073709551680..18446744073709551808 run past the end of the file (96 bytes)"), "{e}");
        let e = parse_err(&one_tensor(&[32], 0, 16, 200));
        assert!(e.ends_with("data offset 16 is not a multiple of the alignment 32"), "{e}");
        let e = parse_err(&one_tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 0));
        assert!(
            e.contains("dimensions [4294967296, 4294967296, 4294967296] overflow the element count"),
            "{e}"
        );
        let e = parse_err(&one_tensor(&[u64::MAX], 0, 0, 0));
        assert!(e.contains("dimension 18446744073709551615 is too large"), "{e}");
        let e = parse_err(&one_tensor(&[1; 5], 0, 0, 0));
        assert!(e.contains("5 dimensions (at most 4)"), "{e}");
        let e = parse_err(&one_tensor(&[48, 2], 2, 0, 1000));
        assert!(e.contains("row length 48 is not a multiple of the Q4_0 block size 32"), "{e}");
        // Element count fits but bytes do not (F32: 4 bytes each).
        let e = parse_err(&one_tensor(&[1 << 62], 0, 0, 0));
        assert!(e.contains("overflow the byte count") || e.contains("run past the end"), "{e}");
        // n_dims of u32::MAX.
        let mut w = Writer::default();
        w.header(3, 1, 0).str("t").u32(u32::MAX);
        w.buf.resize(200, 0);
        assert!(parse_err(&w.buf).contains("4294967295 dimensions (at most 4)"));
        // Duplicate names.
        let mut w = Writer::default();
        w.header(3, 2, 0).tensor_info("x", &[1], 0, 0).tensor_info("x", &[1], 0, 32).pad(32);
        w.buf.resize(w.buf.len() + 64, 0);
        assert!(parse_err(&w.buf).ends_with("tensor info 1 ('x') at byte 57: duplicate tensor name"));
    }

    #[test]
    fn truncated_everywhere() {
        let (buf, _) = sample(3, None);
        let full = parse_ok(&buf);
        let last_end = full.tensors.iter().map(|t| t.offset + t.bytes).max().unwrap();
        for cut in 0..buf.len() {
            let r = parse(&buf[..cut], "cut.gguf");
            if cut >= last_end {
                assert!(r.is_ok(), "cut at {cut}");
                continue;
            }
            let e = r.err().unwrap().to_string();
            assert!(e.starts_with("cut.gguf: "), "{e}");
            assert!(
                e.contains("not a GGUF file")
                    || e.contains(&format!("file is {cut} bytes)"))
                    || e.contains(&format!("run past the end of the file ({cut} bytes)")),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn truncated_real_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("skipped: {} not found", path.display());
            return;
        };
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.tensors.len(), 272);
        assert_eq!(g.meta("general.architecture").and_then(MetaValue::as_str), Some("llama"));
        assert_eq!(
            g.meta("tokenizer.ggml.tokens").and_then(MetaValue::as_array).map(<[_]>::len),
            Some(49152)
        );
        let data_offset = g.data_offset();
        // Every offset in the first KiB (the scalar metadata), then ~150 spread over the tokenizer
        // arrays and tensor infos (each cut reparses them), then ~50 in the data section.
        let mut cuts: Vec<usize> = (0..1024).collect();
        cuts.extend((1024..data_offset).step_by(data_offset / 150));
        cuts.extend((data_offset..bytes.len()).step_by(bytes.len() / 50));
        for cut in cuts {
            let e = parse(&bytes[..cut], "m.gguf").err().unwrap_or_else(|| panic!("cut at {cut} parsed"));
            let e = e.to_string();
            assert!(e.contains(&format!("{cut} bytes")) || cut < 4, "cut at {cut}: {e}");
        }
    }

    /// Fixed xorshift so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_bytes_and_mutations() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut errors = 0;
        // Pure noise, with and without a valid magic + version.
        for i in 0..3000 {
            let len = (rng.next() % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 && len >= 8 {
                buf[..8].copy_from_slice(b"GGUF\x03\x00\x00\x00");
            }
            errors += parse(&buf, "r.gguf").is_err() as usize;
        }
        // Valid file with a few random bytes overwritten, and with random small counts.
        let (good, _) = sample(3, None);
        for _ in 0..20000 {
            let mut buf = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % buf.len();
                buf[at] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(4) {
                let at = (rng.next() as usize) % (buf.len() - 8);
                let v = [0, 1, 255, 1 << 32, u64::MAX, rng.next() % 1000][(rng.next() % 6) as usize];
                buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            if let Err(e) = parse(&buf, "r.gguf") {
                assert!(e.to_string().starts_with("r.gguf: "));
                errors += 1;
            }
        }
        assert!(errors > 1000);
    }
}
