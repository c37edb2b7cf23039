//! Packed (quantized) linear weights in the model, and how they are stored.
//!
//! A packed layer keeps its [`PackedMatrix`] as it is in memory; the forward pass runs a kernel
//! that dequantizes inside the product (`distill_quant::cpu` on the CPU backend,
//! `distill_quant::cube` on WGPU) and never builds the f32 weight.
//!
//! # Storage in safetensors
//!
//! A packed weight `W` named `NAME` (e.g. `model.layers.0.mlp.up_proj.weight`) of shape
//! `[rows, cols]` is stored as up to three tensors:
//!
//! | tensor          | dtype | shape               | holds                                        |
//! |-----------------|-------|---------------------|----------------------------------------------|
//! | `NAME.qweight`  | U8    | `[rows, row_bytes]` | the codes, or the GGUF blocks as in a GGUF file |
//! | `NAME.scales`   | F32   | `[rows, groups]`    | int8/int4 only: one scale per group          |
//! | `NAME.mins`     | F32   | `[rows, groups]`    | asymmetric int4 only: one minimum per group  |
//!
//! An asymmetric int4 weight is `q * scale + min` for its code `q` in `0..=15` (GGUF `Q4_1`'s
//! rule with `f32` parameters); the symmetric schemes store `q * scale`.
//!
//! Code layouts are those of `distill_quant` (`int8`: one signed byte per weight; `int4`: two
//! per byte, the even column in the low nibble; `q8_0`/`q4_0`/`q4_1`: ggml's blocks). The file's
//! `__metadata__` holds the key `distill.quantization`, a JSON object:
//!
//! ```json
//! {"version": 2,
//!  "tensors": {"model.layers.0.mlp.up_proj.weight": {"format": "int4-sym-g64", "shape": [1536, 576]}},
//!  "method": "gptq", ...}
//! ```
//!
//! `format` is one of `int8`, `int4-sym-g{32,64,128}`, `int4-asym-g{32,64,128}`, `q8_0`,
//! `q4_0`, `q4_1`; further keys record how the model was quantized. Reading and writing
//! round-trip the bytes exactly.
//!
//! Version 1 stored asymmetric int4 with integer zero points (`NAME.zeros`, U8,
//! `w = (q - zero) * scale`). Such weights are refused, naming the file and asking for the
//! model to be quantized again (the zero points cannot be turned into minima without changing
//! the values); the other formats of a version-1 file have not changed and still load.

use burn::prelude::*;
use distill_quant::cube::{CubeError, DevicePacked, packed_linear};
use distill_quant::{Format, GgmlMatrix, PackedMatrix, QuantizedMatrix};
use safetensors::tensor::Dtype;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `__metadata__` key holding the quantization header.
pub const METADATA_KEY: &str = "distill.quantization";
/// Version of the header layout: 2 since asymmetric int4 stores `f32` minima (`NAME.mins`)
/// instead of `u8` zero points (`NAME.zeros`, version 1).
pub const HEADER_VERSION: u64 = 2;

/// Why an asymmetric int4 weight `name` written with integer zero points cannot be read.
fn zero_point_layout(name: &str) -> String {
    format!(
        "`{name}` is int4-asym with integer zero points (`{name}.zeros`), written before \
         asymmetric int4 stored an f32 minimum per group (`{name}.mins`); the values cannot be \
         converted: re-quantize the model (`distill quantize ... --asym`)"
    )
}

/// A packed weight of a linear layer: the host matrix, plus its copy on a WGPU device when the
/// model lives there (a packed model computes on the CPU or a GPU; it is not trained).
#[derive(Clone, Debug)]
pub struct PackedWeight {
    host: Arc<PackedMatrix>,
    device: Option<Arc<DevicePacked>>,
}

impl PackedWeight {
    /// Wraps `m` for a model on `device`, uploading it (still packed) to a GPU device.
    pub fn new(m: PackedMatrix, device: &Device) -> Self {
        let device_copy = match DevicePacked::upload(&m, device) {
            Ok(d) => Some(Arc::new(d)),
            // The CPU backend reads the host matrix.
            Err(CubeError::NotCubeDevice(_)) => None,
            Err(e) => {
                tracing::warn!("packed weight stays on the host, computed on the CPU: {e}");
                None
            }
        };
        Self {
            host: Arc::new(m),
            device: device_copy,
        }
    }

    /// The packed matrix.
    pub fn matrix(&self) -> &PackedMatrix {
        &self.host
    }

    /// `x Wᵀ` for `x` `[..., cols]`, giving `[..., rows]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (rows, cols) = (self.host.rows(), self.host.cols());
        let tokens: usize = dims[..D - 1].iter().product();
        let x2 = x.reshape([tokens, cols]);
        let y = match &self.device {
            Some(d) => packed_linear(x2, d),
            None => {
                let device = x2.device();
                let xs: Vec<f32> = x2
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .expect("f32 activations");
                let mut ys = vec![0f32; tokens * rows];
                distill_quant::cpu::matmul(&self.host, &xs, tokens, &mut ys)
                    .expect("shapes checked at load");
                Tensor::from_data(TensorData::new(ys, [tokens, rows]), &device)
            }
        };
        let mut shape = dims;
        shape[D - 1] = rows;
        y.reshape(shape)
    }
}

/// One tensor of a safetensors file, already encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

/// The tensors that store packed weight `name` (see the module docs).
pub fn encode(name: &str, m: &PackedMatrix) -> Vec<RawTensor> {
    let rows = m.rows();
    let raw = |suffix: &str, dtype, cols: usize, bytes: Vec<u8>| RawTensor {
        name: format!("{name}.{suffix}"),
        dtype,
        shape: vec![rows, cols],
        bytes,
    };
    match m {
        PackedMatrix::Int(q) => {
            let groups = q.scales().len() / rows.max(1);
            let mut out = vec![
                raw(
                    "qweight",
                    Dtype::U8,
                    q.data().len() / rows.max(1),
                    q.data().to_vec(),
                ),
                raw(
                    "scales",
                    Dtype::F32,
                    groups,
                    q.scales().iter().flat_map(|s| s.to_le_bytes()).collect(),
                ),
            ];
            if !q.mins().is_empty() {
                out.push(raw(
                    "mins",
                    Dtype::F32,
                    groups,
                    q.mins().iter().flat_map(|m| m.to_le_bytes()).collect(),
                ));
            }
            out
        }
        PackedMatrix::Ggml(g) => vec![raw("qweight", Dtype::U8, g.row_bytes(), g.data().to_vec())],
    }
}

/// Rebuilds packed weight `name` of `format` and shape `[rows, cols]` from its stored tensors;
/// `get` returns a stored tensor's dtype, shape and bytes.
pub fn decode<'a>(
    name: &str,
    format: Format,
    rows: usize,
    cols: usize,
    mut get: impl FnMut(&str) -> Option<(Dtype, Vec<usize>, &'a [u8])>,
) -> Result<PackedMatrix, String> {
    if let Format::Int(s) = format
        && s.is_asymmetric()
        && get(&format!("{name}.mins")).is_none()
        && get(&format!("{name}.zeros")).is_some()
    {
        return Err(zero_point_layout(name));
    }
    let f32s = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut part = |suffix: &str, dtype: Dtype| -> Result<&'a [u8], String> {
        let full = format!("{name}.{suffix}");
        let (d, shape, bytes) = get(&full).ok_or_else(|| format!("`{full}` is missing"))?;
        if d != dtype {
            return Err(format!("`{full}` is {d:?}, expected {dtype:?}"));
        }
        if shape.first() != Some(&rows) || shape.len() != 2 {
            return Err(format!(
                "`{full}` has shape {shape:?}, expected [{rows}, _]"
            ));
        }
        Ok(bytes)
    };
    let m = match format {
        Format::Int(scheme) => {
            let data = part("qweight", Dtype::U8)?.to_vec();
            let scales = f32s(part("scales", Dtype::F32)?);
            let mins = if scheme.is_asymmetric() {
                f32s(part("mins", Dtype::F32)?)
            } else {
                Vec::new()
            };
            QuantizedMatrix::from_parts(rows, cols, scheme, data, scales, mins)
                .map(PackedMatrix::Int)
        }
        Format::Ggml(ty) => {
            let data = part("qweight", Dtype::U8)?.to_vec();
            GgmlMatrix::from_bytes(ty, rows, cols, data).map(PackedMatrix::Ggml)
        }
    };
    m.map_err(|e| format!("`{name}`: {e}"))
}

/// The quantization header: every packed weight's format and shape, plus `extra` (method,
/// calibration...).
pub fn header(packed: &[(String, &PackedMatrix)], extra: &Value) -> Value {
    let tensors: BTreeMap<&str, Value> = packed
        .iter()
        .map(|(n, m)| {
            let v = json!({"format": m.format().to_string(), "shape": [m.rows(), m.cols()]});
            (n.as_str(), v)
        })
        .collect();
    let mut h = json!({"version": HEADER_VERSION, "tensors": tensors});
    if let (Some(h), Some(extra)) = (h.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            h.entry(k.clone()).or_insert(v.clone());
        }
    }
    h
}

/// Each packed weight's format, read from a header (version 2, or 1 without asymmetric int4).
pub fn header_formats(header: &Value) -> Result<BTreeMap<String, (Format, [usize; 2])>, String> {
    let version = match header.get("version").and_then(Value::as_u64) {
        Some(v @ (1 | HEADER_VERSION)) => v,
        other => return Err(format!("{METADATA_KEY}: unsupported version {other:?}")),
    };
    let tensors = header
        .get("tensors")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{METADATA_KEY}: missing `tensors` object"))?;
    tensors
        .iter()
        .map(|(name, v)| {
            let format = v
                .get("format")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{METADATA_KEY}: `{name}` has no format"))?
                .parse::<Format>()
                .map_err(|e| format!("{METADATA_KEY}: `{name}`: {e}"))?;
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .unwrap_or_default();
            if version == 1 && matches!(format, Format::Int(s) if s.is_asymmetric()) {
                return Err(format!(
                    "{METADATA_KEY} version 1: {}",
                    zero_point_layout(name)
                ));
            }
            match shape[..] {
                [r, c] => Ok((name.clone(), (format, [r, c]))),
                _ => Err(format!(
                    "{METADATA_KEY}: `{name}` needs a shape [rows, cols]"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`decode`] reading the parts from `tensors`.
    fn decode_from(
        tensors: &[RawTensor],
        name: &str,
        format: Format,
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, String> {
        decode(name, format, rows, cols, |n| {
            tensors
                .iter()
                .find(|t| t.name == n)
                .map(|t| (t.dtype, t.shape.clone(), t.bytes.as_slice()))
        })
    }

    #[test]
    fn encode_decode_round_trips_every_format() {
        let (rows, cols) = (6, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 997) as f32 / 500.0) - 1.0)
            .collect();
        for f in Format::all() {
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            let tensors = encode("l.weight", &m);
            let back = decode_from(&tensors, "l.weight", f, rows, cols).unwrap();
            assert_eq!(back, m, "{f}");
            let h = header(&[("l.weight".into(), &m)], &json!({"method": "rtn"}));
            let formats = header_formats(&h).unwrap();
            assert_eq!(formats["l.weight"], (f, [rows, cols]));
        }
    }

    /// Asymmetric int4 is stored as `scales` and `mins`, both F32 `[rows, groups]`, and read
    /// back bit for bit (minima away from 0 included).
    #[test]
    fn int4_asym_stores_f32_minima() {
        let (rows, cols) = (3, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| 0.3 + (i * 7919 % 997) as f32 / 5000.0 - (i / cols) as f32)
            .collect();
        for g in [32, 64, 128] {
            let f: Format = format!("int4-asym-g{g}").parse().unwrap();
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            let tensors = encode("l.weight", &m);
            let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                ["l.weight.qweight", "l.weight.scales", "l.weight.mins"]
            );
            let mins = &tensors[2];
            assert_eq!(
                (mins.dtype, &mins.shape[..]),
                (Dtype::F32, &[rows, cols / g][..])
            );
            let PackedMatrix::Int(q) = &m else {
                unreachable!()
            };
            let stored: Vec<f32> = mins
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(stored, q.mins());
            assert!(stored.iter().all(|&m| m != 0.0), "{stored:?}");
            let back = decode_from(&tensors, "l.weight", f, rows, cols).unwrap();
            assert_eq!(back, m);
            // A non-finite minimum is refused, not read.
            let mut bad = tensors.clone();
            bad[2].bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            let err = decode_from(&bad, "l.weight", f, rows, cols).unwrap_err();
            assert!(err.contains("l.weight") && err.contains("finite"), "{err}");
        }
    }

    /// Weights written with integer zero points (`NAME.zeros`, header version 1) are refused
    /// with a request to re-quantize, never read as minima.
    #[test]
    fn zero_point_layout_is_refused() {
        let (rows, cols) = (2, 64);
        let f: Format = "int4-asym-g32".parse().unwrap();
        let m = PackedMatrix::quantize_rtn(&[0.25; 128], rows, cols, f).unwrap();
        let mut tensors = encode("w", &m);
        tensors[2] = RawTensor {
            name: "w.zeros".into(),
            dtype: Dtype::U8,
            shape: vec![rows, 2],
            bytes: vec![8; 4],
        };
        let err = decode_from(&tensors, "w", f, rows, cols).unwrap_err();
        assert!(
            err.contains("`w.zeros`") && err.contains("re-quantize"),
            "{err}"
        );
        // Neither `mins` nor `zeros`: simply missing.
        tensors.pop();
        let err = decode_from(&tensors, "w", f, rows, cols).unwrap_err();
        assert!(err.contains("w.mins") && err.contains("missing"), "{err}");

        let h = header(&[("w".into(), &m)], &Value::Null);
        assert_eq!(h["version"], HEADER_VERSION);
        let mut v1 = h.clone();
        v1["version"] = json!(1);
        let err = header_formats(&v1).unwrap_err();
        assert!(
            err.contains("version 1") && err.contains("`w.zeros`") && err.contains("re-quantize"),
            "{err}"
        );
        // The formats version 2 did not change still load from a version-1 header.
        let sym =
            PackedMatrix::quantize_rtn(&[0.25; 128], rows, cols, "int4-sym-g32".parse().unwrap())
                .unwrap();
        let mut v1 = header(&[("w".into(), &sym)], &Value::Null);
        v1["version"] = json!(1);
        assert_eq!(header_formats(&v1).unwrap()["w"].0, sym.format());
        let mut v3 = h;
        v3["version"] = json!(3);
        assert!(header_formats(&v3).unwrap_err().contains("version"));
    }

    #[test]
    fn decode_names_what_is_wrong() {
        let m = PackedMatrix::quantize_rtn(&[0.5; 64], 1, 64, "int8".parse().unwrap()).unwrap();
        let tensors = encode("w", &m);
        let err = decode("w", m.format(), 1, 64, |n| {
            tensors
                .iter()
                .find(|t| t.name == n && !n.ends_with("scales"))
                .map(|t| (t.dtype, t.shape.clone(), t.bytes.as_slice()))
        })
        .unwrap_err();
        assert!(err.contains("w.scales") && err.contains("missing"), "{err}");
        let err = decode_from(&tensors, "w", m.format(), 2, 64).unwrap_err();
        assert!(err.contains("shape"), "{err}");
    }
}
