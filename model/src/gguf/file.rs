//! The GGUF container, both ways: header, metadata (key, typed value), tensor infos and the
//! aligned tensor data, little-endian, versions 2 and 3.
//!
//! Reading memory-maps the file and checks everything before handing out a byte: counts and
//! lengths against the bytes left, tensor types, dims, alignment and that every tensor's data
//! lies inside the file. Nothing is allocated from a count before the bytes it claims exist.

use super::GgufError;
use crate::fsutil::write_atomic;
use distill_quant::gguf::{GgmlType, dequantize_matrix};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes.
pub const VERSION: u32 = 3;
/// Alignment of the tensor data when `general.alignment` is absent (and the one we write).
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted in metadata.
const MAX_DEPTH: usize = 4;

/// A metadata value, with its GGUF type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8: UTF-8 text.
    String(String),
    /// Type 9: values of one type.
    Array(Vec<MetaValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer of any width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float, an `f32` taken at its shortest decimal (so `1e-5` stays `1e-5`).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => v.to_string().parse().ok(),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A short description for listings: scalars in full, strings cut, arrays by length.
    pub fn summary(&self) -> String {
        match self {
            Self::String(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Self::String(s) => format!("{s:?}"),
            Self::Array(items) => format!("[{} values]", items.len()),
            Self::Bool(v) => v.to_string(),
            Self::F32(v) => v.to_string(),
            Self::F64(v) => v.to_string(),
            other => other.as_i64().map_or_else(String::new, |v| v.to_string()),
        }
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Dimensions, innermost first: `dims[0]` is the row length (`ne0`).
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The shape outermost first, as HF and burn write it (`[out, in]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of values.
    pub fn num_values(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: usize,
    data_start: usize,
}

impl GgufFile {
    /// Maps and parses `path`, checking the whole layout.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file_err = |reason: String| GgufError::File {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| file_err(e.to_string()))?;
        // SAFETY: read-only mapping; a file changed underneath by another process gives wrong
        // values (every access is bounds-checked against the mapping's length), as with any mmap.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(e.to_string()))?;
        let parsed = parse(&map).map_err(|e| e.at(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version: parsed.version,
            keys: index(parsed.metadata.iter().map(|(k, _)| k)),
            metadata: parsed.metadata,
            by_name: index(parsed.tensors.iter().map(|t| &t.name)),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the tensor data.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor of this file (checked to be in range on open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start + info.offset as usize;
        &self.map[start..start + info.n_bytes]
    }

    /// A tensor's values as `f32`, in storage order (rows of `dims[0]` values).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let cols = info.dims.first().copied().unwrap_or(1) as usize;
        let rows = info.num_values().checked_div(cols).unwrap_or(0);
        dequantize_matrix(info.ggml_type, self.tensor_bytes(info), rows, cols).map_err(|e| {
            GgufError::Tensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                reason: e.to_string(),
            }
        })
    }
}

fn index<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

/// A parse failure, before the path is known.
#[derive(Debug)]
pub(super) enum ParseError {
    File(String),
    Key(String, String),
    Tensor(String, String),
}

impl ParseError {
    pub(super) fn at(self, path: &Path) -> GgufError {
        let path = path.to_path_buf();
        match self {
            Self::File(reason) => GgufError::File { path, reason },
            Self::Key(key, reason) => GgufError::Key { path, key, reason },
            Self::Tensor(tensor, reason) => GgufError::Tensor {
                path,
                tensor,
                reason,
            },
        }
    }
}

/// The parsed layout of a GGUF file.
pub(super) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    pub data_start: usize,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.pos,
                self.buf.len()
            ));
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        if n > (self.left() / min_size.max(1)) as u64 {
            return Err(format!(
                "truncated: {what} is {n}, more than the {} bytes left can hold",
                self.left()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("a u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("an i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("a u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("an i16")?)),
            4 => MetaValue::U32(self.u32("a u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("an i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("an f32")?)),
            7 => match self.array::<1>("a bool")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("bool byte {b}, expected 0 or 1")),
            },
            8 => MetaValue::String(self.string("a string")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let item = self.u32("array item type")?;
                let n = self.count(min_value_size(item)?, "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("a u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("an i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("an f64")?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

/// Fewest bytes a value of type `ty` takes.
fn min_value_size(ty: u32) -> Result<usize, String> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => return Err(format!("unknown value type {other}")),
    })
}

/// Parses the layout of a GGUF file held in `buf`.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>("the magic").map_err(ParseError::File)?;
    if magic != MAGIC {
        return Err(ParseError::File(format!(
            "not a GGUF file: starts with {magic:02x?}, expected \"GGUF\""
        )));
    }
    let version = c.u32("the version").map_err(ParseError::File)?;
    if version != 2 && version != 3 {
        let reason = if matches!(version.swap_bytes(), 2 | 3) {
            "big-endian GGUF files are not supported".to_string()
        } else {
            format!("GGUF version {version} is not supported (supported: 2, 3)")
        };
        return Err(ParseError::File(reason));
    }
    let n_tensors = c
        .count(8 + 4 + 8 + 4 + 8, "tensor count")
        .map_err(ParseError::File)?;
    let n_kv = c
        .count(8 + 4 + 1, "metadata count")
        .map_err(ParseError::File)?;

    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv);
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let key = c
            .string(&format!("metadata key {i}"))
            .map_err(ParseError::File)?;
        let ty = c
            .u32("value type")
            .map_err(|e| ParseError::Key(key.clone(), e))?;
        let value = c
            .value(ty, 0)
            .map_err(|e| ParseError::Key(key.clone(), e))?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(ParseError::Key(key, "appears twice".into()));
        }
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(other) => {
            return Err(ParseError::Key(
                "general.alignment".into(),
                format!("{other:?}: expected a u32 power of two"),
            ));
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let name = c
            .string(&format!("name of tensor {i}"))
            .map_err(ParseError::File)?;
        let err = |reason: String| ParseError::Tensor(name.clone(), reason);
        let n_dims = c.u32("dimension count").map_err(err)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(err(format!(
                "{n_dims} dimensions, expected 1 to {MAX_DIMS}"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64("a dimension"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let type_id = c.u32("tensor type").map_err(err)?;
        let ggml_type = GgmlType::from_id(type_id).map_err(|e| err(e.to_string()))?;
        let offset = c.u64("data offset").map_err(err)?;
        let n_bytes = tensor_bytes(ggml_type, &dims).map_err(err)?;
        if names.insert(name.clone(), i).is_some() {
            return Err(err("appears twice".into()));
        }
        tensors.push(TensorInfo {
            name,
            ggml_type,
            dims,
            offset,
            n_bytes,
        });
    }

    let data_start = c.pos.next_multiple_of(alignment);
    for t in &tensors {
        let err = |reason: String| ParseError::Tensor(t.name.clone(), reason);
        if !t.offset.is_multiple_of(alignment as u64) {
            return Err(err(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let end = (data_start as u64)
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes as u64));
        if end.is_none_or(|e| e > buf.len() as u64) {
            return Err(err(format!(
                "data out of range: {} bytes at offset {} of the data section (starting at byte \
                 {data_start}), but the file has {} bytes (truncated?)",
                t.n_bytes,
                t.offset,
                buf.len()
            )));
        }
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// Bytes of a tensor of `ty` with `dims` (innermost first).
fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> Result<usize, String> {
    let too_big = || format!("dims {dims:?} are too large");
    let row = usize::try_from(dims[0]).map_err(|_| too_big())?;
    let row_bytes = ty.row_bytes(row).map_err(|e| e.to_string())?;
    dims[1..].iter().try_fold(row_bytes, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(too_big)
    })
}

/// One tensor to write: already encoded in its GGML type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Storage type of `bytes`.
    pub ggml_type: GgmlType,
    /// Dimensions, innermost first (`[in, out]` for an HF `[out, in]` matrix).
    pub dims: Vec<u64>,
    /// The encoded values, rows of `dims[0]` values one after the other.
    pub bytes: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> Result<(), String> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(items) => {
            let ty = items.first().map_or(0, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != ty) {
                return Err("array items of different types".into());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}

/// Writes a GGUF v3 file atomically: `metadata` in the given order, then the tensors in the
/// given order, each at a multiple of the alignment (`general.alignment` if `metadata` sets it,
/// else 32).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensor],
) -> Result<(), GgufError> {
    let key_err = |key: &str, reason: String| GgufError::Key {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let tensor_err = |name: &str, reason: String| GgufError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut head = Vec::new();
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut keys = std::collections::HashSet::new();
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(key_err(key, "given twice".into()));
        }
        if key == "general.alignment" {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() => alignment = *a as usize,
                _ => return Err(key_err(key, "expected a u32 power of two".into())),
            }
        }
        put_string(&mut head, key);
        head.extend_from_slice(&value.type_id().to_le_bytes());
        put_value(&mut head, value).map_err(|e| key_err(key, e))?;
    }
    let mut names = std::collections::HashSet::new();
    let mut offset = 0usize;
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(tensor_err(&t.name, "given twice".into()));
        }
        if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
            return Err(tensor_err(&t.name, format!("{} dimensions", t.dims.len())));
        }
        let expected = tensor_bytes(t.ggml_type, &t.dims).map_err(|e| tensor_err(&t.name, e))?;
        if expected != t.bytes.len() {
            return Err(tensor_err(
                &t.name,
                format!(
                    "{} bytes, but {} dims {:?} take {expected}",
                    t.bytes.len(),
                    t.ggml_type,
                    t.dims
                ),
            ));
        }
        put_string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + t.bytes.len()).next_multiple_of(alignment);
    }
    head.resize(head.len().next_multiple_of(alignment), 0);
    write_atomic(path, |out| {
        out.write_all(&head)?;
        for t in tensors {
            out.write_all(&t.bytes)?;
            let pad = t.bytes.len().next_multiple_of(alignment) - t.bytes.len();
            out.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    })
    .map_err(|e| GgufError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
