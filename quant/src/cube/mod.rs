//! Packed quantized weights on a burn CubeCL device (WGPU), and a linear
//! layer that dequantizes inside its kernel.
//!
//! * [`DevicePacked::upload`] copies a [`PackedMatrix`] (int8, int4 sym/asym,
//!   Q8_0, Q4_0, Q4_1) to the device, still packed.
//! * [`packed_linear`] computes `x · Wᵀ` (`x [tokens, cols]` →
//!   `[tokens, rows]`) with the codes decoded in registers and shared memory;
//!   no `f32` copy of `W` is ever built. Up to [`DECODE_MAX_TOKENS`] tokens
//!   go through a mat-vec kernel (one workgroup per 4 output rows, a
//!   shared-memory reduction over 64 threads per row), more through a tiled
//!   kernel (`32 × 32` output tiles, weights dequantized 32 inputs at a time
//!   into shared memory). See [`kernel`] for the details.
//!
//! # Device layout
//!
//! Every format is repacked at upload into one uniform layout, so one kernel
//! per code width serves them all. For a `[rows, cols]` matrix with `b`-bit
//! codes (`b` = 8 or 4), `k = 32 / b` codes per word and groups of `g` inputs:
//!
//! | tensor    | dtype | length                      | content                                |
//! |-----------|-------|-----------------------------|----------------------------------------|
//! | `codes`   | `u32` | `rows · ceil(cols / k)`     | row-major; input `c` of a row is bits `b·(c mod k) ..` of word `c / k`; a last partial word is zero-padded |
//! | `scales`  | `f32` | `rows · cols / g`           | `s`, row-major by group                |
//! | `offsets` | `f32` | `rows · cols / g`           | `o`, row-major by group                |
//!
//! and the weight is `w = s · u + o`, with `u` the unsigned code:
//!
//! | format          | `b` | `g`    | `u`                         | `s`     | `o`       |
//! |-----------------|-----|--------|-----------------------------|---------|-----------|
//! | int8            | 8   | `cols` | `q + 128` (sign bit flipped) | scale  | `−128·s`  |
//! | int4 sym        | 4   | 32/64/128 | nibble `q + 8`           | scale   | `−8·s`    |
//! | int4 asym       | 4   | 32/64/128 | nibble `q`               | scale   | min       |
//! | Q8_0            | 8   | 32     | `q + 128`                   | `d`     | `−128·d`  |
//! | Q4_0            | 4   | 32     | nibble `n`                  | `d`     | `−8·d`    |
//! | Q4_1            | 4   | 32     | nibble `n`                  | `d`     | `m`       |
//!
//! GGUF's `f16` `d` and `m` are widened to `f32` (exactly), and its 4-bit
//! blocks (low nibbles = first half) are reordered into input order. The
//! result equals the format's own dequantization up to `f32` rounding
//! (`s·u + o` against `s·(u − 8)` and the like; for the affine int4 asym
//! and Q4_1, `s·u + o` is their own rule). It costs 64 bits of scale and
//! offset per group: 6 bits per weight for 4-bit groups of 32 (as int4 asym
//! stores them on the host; Q4_0 stores 4.5), 8.0–8.06 for int8 and Q8_0
//! (Q8_0 stores 8.5).
//!
//! # Devices
//!
//! Only CubeCL devices are supported (WGPU on any adapter, lavapipe
//! included; CUDA/ROCm if compiled in): [`DevicePacked::upload`] and
//! [`try_packed_linear`] return [`CubeError::NotCubeDevice`] for the flex CPU
//! backend rather than fall back, and [`packed_linear`] panics with that
//! message. Quantized weights are inference-only: an input with autodiff
//! enabled is computed without it (the output is a constant to the graph,
//! no gradient flows back through it) and returned with autodiff re-enabled.

pub mod kernel;
mod layout;

use burn::backend::{Dispatch, DispatchDevice};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

use crate::error::QuantError;
use crate::format::{Format, PackedMatrix};
use crate::gguf::GgmlType;
pub use kernel::{DECODE_MAX_TOKENS, MAX_ROWS, PackedLinearOps, PackedShape};
use layout::HostPacked;

/// Why a packed matrix could not be uploaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum CubeError {
    /// The device is not a CubeCL (WGPU, CUDA, ROCm) device.
    #[error(
        "packed quantized kernels run on a CubeCL device (WGPU, e.g. `--device wgpu`), \
         not on {0}"
    )]
    NotCubeDevice(String),
    /// A GGML type that is not a packed format (`F32`, `F16`).
    #[error("GGML type {0} is not a packed format: only Q8_0, Q4_0 and Q4_1 upload packed")]
    UnsupportedType(GgmlType),
    /// The input's last dimension is not the matrix's column count.
    #[error("input has {actual} columns, the packed matrix takes {expected}")]
    Columns {
        /// The matrix's columns.
        expected: usize,
        /// The input's last dimension.
        actual: usize,
    },
    /// The input and the matrix live on different devices.
    #[error("input on {input}, packed matrix on {weights}")]
    DeviceMismatch {
        /// The input's device.
        input: String,
        /// The matrix's device.
        weights: String,
    },
    /// More output rows than the kernels' grid covers ([`MAX_ROWS`]).
    #[error("{0} output rows: packed matrices take at most {MAX_ROWS}")]
    TooManyRows(usize),
    /// A bad shape.
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// A [`PackedMatrix`] on a CubeCL device, in the uniform layout of the
/// [module docs](self): `u32` code words, `f32` scales and offsets.
#[derive(Debug, Clone)]
pub struct DevicePacked {
    codes: Tensor<1, Int>,
    scales: Tensor<1>,
    offsets: Tensor<1>,
    shape: PackedShape,
    format: Format,
    device: Device,
}

/// `device` without autodiff, if it is a CubeCL device.
fn cube_device(device: &Device) -> Result<Device, CubeError> {
    let device = device.clone().without_autodiff();
    match device.as_dispatch() {
        DispatchDevice::Cube(_) => Ok(device),
        other => Err(CubeError::NotCubeDevice(format!("{other:?}"))),
    }
}

impl DevicePacked {
    /// Repacks `m` into the device layout and uploads it to `device` (a
    /// CubeCL device; an autodiff one is taken without autodiff).
    pub fn upload(m: &PackedMatrix, device: &Device) -> Result<Self, CubeError> {
        let device = cube_device(device)?;
        if m.rows() > MAX_ROWS {
            return Err(CubeError::TooManyRows(m.rows()));
        }
        let h = HostPacked::from_packed(m)?;
        let shape = PackedShape {
            rows: h.rows,
            cols: h.cols,
            bits: h.bits,
            words_per_row: h.words_per_row,
            words_per_group: h.words_per_group,
            groups_per_row: h.groups_per_row,
        };
        let n_codes = h.codes.len();
        let n_groups = h.scales.len();
        let codes =
            Tensor::<1, Int>::from_data(TensorData::new(h.codes, [n_codes]), (&device, DType::U32));
        let f32s = |v: Vec<f32>| {
            Tensor::<1>::from_data(TensorData::new(v, [n_groups]), (&device, DType::F32))
        };
        Ok(Self {
            codes,
            scales: f32s(h.scales),
            offsets: f32s(h.offsets),
            shape,
            format: m.format(),
            device,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.shape.rows
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.shape.cols
    }

    /// The format it was uploaded from.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes held on the device: code words, scales and offsets.
    pub fn bytes(&self) -> usize {
        4 * (self.codes.shape().num_elements() + 2 * self.scales.shape().num_elements())
    }

    /// The device it lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kernels' view of the shape.
    pub fn shape(&self) -> PackedShape {
        self.shape
    }
}

/// `x · Wᵀ`: `x [tokens, cols]` → `[tokens, rows]`, `W` dequantized inside
/// the kernel. See [`try_packed_linear`].
///
/// # Panics
///
/// Where [`try_packed_linear`] returns an error: `x` not on `w`'s (CubeCL)
/// device, or the wrong number of columns.
pub fn packed_linear(x: Tensor<2>, w: &DevicePacked) -> Tensor<2> {
    try_packed_linear(x, w).unwrap_or_else(|e| panic!("packed_linear: {e}"))
}

/// `x · Wᵀ`: `x [tokens, cols]` (any float dtype and strides, on `w`'s
/// device) → `[tokens, rows]` in `x`'s dtype, computed in `f32`.
///
/// Autodiff is stripped from `x` for the kernel and re-enabled on the output
/// (inference only: no gradient flows through).
pub fn try_packed_linear(x: Tensor<2>, w: &DevicePacked) -> Result<Tensor<2>, CubeError> {
    let [tokens, cols] = x.dims();
    if cols != w.cols() {
        return Err(CubeError::Columns {
            expected: w.cols(),
            actual: cols,
        });
    }
    let device = cube_device(&x.device())?;
    if device != w.device {
        return Err(CubeError::DeviceMismatch {
            input: format!("{device:?}"),
            weights: format!("{:?}", w.device),
        });
    }
    let autodiff = x.is_autodiff();
    let x = x.without_autodiff();
    let dtype = x.dtype();
    let y = if tokens == 0 || w.rows() == 0 {
        Tensor::<2>::zeros([tokens, w.rows()], (&device, DType::F32))
    } else {
        let x = if dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        Tensor::from_dispatch(Dispatch::packed_linear(
            x.into_dispatch(),
            w.codes.clone().into_dispatch(),
            w.scales.clone().into_dispatch(),
            w.offsets.clone().into_dispatch(),
            w.shape,
        ))
    };
    let y = if dtype == DType::F32 {
        y
    } else {
        y.cast(FloatDType::from(dtype))
    };
    Ok(if autodiff { y.autodiff() } else { y })
}
