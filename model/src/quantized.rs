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
//! | `NAME.zeros`    | U8    | `[rows, groups]`    | asymmetric int4 only: zero points `0..=15`   |
//!
//! Code layouts are those of `distill_quant` (`int8`: one signed byte per weight; `int4`: two
//! per byte, the even column in the low nibble; `q8_0`/`q4_0`/`q4_1`: ggml's blocks). The file's
//! `__metadata__` holds the key `distill.quantization`, a JSON object:
//!
//! ```json
//! {"version": 1,
//!  "tensors": {"model.layers.0.mlp.up_proj.weight": {"format": "int4-sym-g64", "shape": [1536, 576]}},
//!  "method": "gptq", ...}
//! ```
//!
//! `format` is one of `int8`, `int4-sym-g{32,64,128}`, `int4-asym-g{32,64,128}`, `q8_0`,
//! `q4_0`, `q4_1`; further keys record how the model was quantized. Reading and writing
//! round-trip the bytes exactly.

use burn::prelude::*;
use distill_quant::cube::{CubeError, DevicePacked, packed_linear};
use distill_quant::{Format, GgmlMatrix, PackedMatrix, QuantizedMatrix};
use safetensors::tensor::Dtype;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `__metadata__` key holding the quantization header.
pub const METADATA_KEY: &str = "distill.quantization";
/// Version of the header layout.
pub const HEADER_VERSION: u64 = 1;

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
            if !q.zeros().is_empty() {
                out.push(raw("zeros", Dtype::U8, groups, q.zeros().to_vec()));
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
            let scales = part("scales", Dtype::F32)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let zeros = if scheme.is_asymmetric() {
                part("zeros", Dtype::U8)?.to_vec()
            } else {
                Vec::new()
            };
            QuantizedMatrix::from_parts(rows, cols, scheme, data, scales, zeros)
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

/// Each packed weight's format, read from a header.
pub fn header_formats(header: &Value) -> Result<BTreeMap<String, (Format, [usize; 2])>, String> {
    match header.get("version").and_then(Value::as_u64) {
        Some(HEADER_VERSION) => {}
        other => return Err(format!("{METADATA_KEY}: unsupported version {other:?}")),
    }
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

    #[test]
    fn encode_decode_round_trips_every_format() {
        let (rows, cols) = (6, 128);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 997) as f32 / 500.0) - 1.0)
            .collect();
        for f in Format::all() {
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            let tensors = encode("l.weight", &m);
            let back = decode("l.weight", f, rows, cols, |n| {
                tensors
                    .iter()
                    .find(|t| t.name == n)
                    .map(|t| (t.dtype, t.shape.clone(), t.bytes.as_slice()))
            })
            .unwrap();
            assert_eq!(back, m, "{f}");
            let h = header(&[("l.weight".into(), &m)], &json!({"method": "rtn"}));
            let formats = header_formats(&h).unwrap();
            assert_eq!(formats["l.weight"], (f, [rows, cols]));
        }
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
        let err = decode("w", m.format(), 2, 64, |n| {
            tensors
                .iter()
                .find(|t| t.name == n)
                .map(|t| (t.dtype, t.shape.clone(), t.bytes.as_slice()))
        })
        .unwrap_err();
        assert!(err.contains("shape"), "{err}");
    }
}
