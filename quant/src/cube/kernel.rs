//! The CubeCL kernels and the burn backend extension that launches them.
//!
//! Two kernels, each compiled once per code width (4 or 8 bits), so at most
//! four shaders per device:
//!
//! * [`packed_matvec_kernel`] (decode, up to [`DECODE_MAX_TOKENS`] tokens): a
//!   workgroup of `64 × 4` threads owns 4 output rows of one token; the 64
//!   threads of a row stride over its code words (coalesced `u32` loads),
//!   each word giving `s·Σ u·x + o·Σ x` for its 4 or 8 codes, and a
//!   shared-memory tree sums the 64 partials. No subgroup (plane)
//!   operations, so it runs on every adapter.
//! * [`packed_matmul_kernel`] (prefill): `32 tokens × 32 rows` output tiles,
//!   256 threads computing `2 × 2` outputs each; per step of 32 inputs the
//!   workgroup stages the input tile and the *dequantized* weight tile
//!   (`32 × 32` `f32`, never more) in shared memory.
//!
//! Both need 256 invocations per workgroup and at most 8.3 KiB of shared
//! memory: within WebGPU's guaranteed limits.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::CubeTensor;
use burn::backend::{Cube, TensorMetadata};
use burn::cubecl;
use burn::cubecl::prelude::*;
use burn::tensor::{DType, Shape};

/// The most output rows a matrix may have (the decode grid's 65535
/// workgroups of 4 rows).
pub const MAX_ROWS: usize = 65_535 * DY as usize;

/// At most this many tokens go through the decode (mat-vec) kernel; more
/// through the tiled one.
pub const DECODE_MAX_TOKENS: usize = 4;

/// Decode kernel: threads per output row.
const DX: u32 = 64;
/// Decode kernel: output rows per workgroup.
const DY: u32 = 4;
/// Tiled kernel: tokens per tile.
const TM: usize = 32;
/// Tiled kernel: output rows per tile.
const TN: usize = 32;
/// Tiled kernel: inputs per step.
const BK: usize = 32;
/// Tiled kernel: shared-memory row pitch (one pad word against bank conflicts).
const PITCH: usize = BK + 1;
/// Tiled kernel: threads per side (each computes 2 × 2 outputs).
const TT: usize = 16;

/// The shape of a packed matrix as the kernels see it (all in the uniform
/// layout of [`super`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedShape {
    /// Output rows.
    pub rows: usize,
    /// Inputs per row.
    pub cols: usize,
    /// Bits per code: 4 or 8.
    pub bits: u32,
    /// `u32` code words per row.
    pub words_per_row: usize,
    /// Words sharing one scale and offset.
    pub words_per_group: usize,
    /// Scales (and offsets) per row.
    pub groups_per_row: usize,
}

/// The backend extension: `x · Wᵀ` with `W` packed on the device.
///
/// Implemented for burn's CubeCL backend ([`Cube`]: WGPU, and CUDA/ROCm when
/// those runtimes are compiled in). There is no `Autodiff` implementation:
/// quantized weights are inference-only, and
/// [`packed_linear`](super::packed_linear) strips the autodiff context off its
/// input before it dispatches.
#[burn::backend::backend_extension(Cube)]
pub trait PackedLinearOps: burn::backend::Backend {
    /// `x [tokens, cols]` (`f32`, any strides) times the packed matrix
    /// (`codes` `u32`, `scales` and `offsets` `f32`, contiguous, as laid out
    /// by [`DevicePacked`](super::DevicePacked)) transposed: `[tokens, rows]`.
    fn packed_linear(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        offsets: FloatTensor<Self>,
        shape: PackedShape,
    ) -> FloatTensor<Self>;
}

impl PackedLinearOps for Cube {
    fn packed_linear(
        x: CubeTensor,
        codes: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        shape: PackedShape,
    ) -> CubeTensor {
        launch(x, codes, scales, offsets, shape)
    }
}

fn launch(
    x: CubeTensor,
    codes: CubeTensor,
    scales: CubeTensor,
    offsets: CubeTensor,
    shape: PackedShape,
) -> CubeTensor {
    for t in [&codes, &scales, &offsets] {
        x.assert_is_on_same_device(t);
    }
    assert_eq!(x.dtype, DType::F32, "packed_linear takes f32 inputs");
    // A storage-tiled tensor (a matmul operand) is laid back out in rows by a reshape.
    let x = if x.meta.is_tiled() {
        let logical = x.shape();
        Cube::float_reshape(x, logical)
    } else {
        x
    };
    let dims = x.meta.shape().clone();
    assert_eq!(dims.num_dims(), 2, "packed_linear takes a 2-D input");
    let (tokens, cols) = (dims[0], dims[1]);
    assert_eq!(cols, shape.cols, "packed_linear: input columns");
    let rows = shape.rows;
    let client = x.client.clone();
    let device = x.device.clone();
    let n_out = tokens * rows;
    let out = client.empty(n_out * size_of::<f32>());
    let out_arg = unsafe { BufferArg::from_raw_parts(out.clone(), n_out) };
    let PackedShape {
        words_per_row: wpr,
        words_per_group: wpg,
        groups_per_row: gpr,
        bits,
        ..
    } = shape;
    if tokens <= DECODE_MAX_TOKENS {
        let count = CubeCount::Static(rows.div_ceil(DY as usize) as u32, tokens as u32, 1);
        // SAFETY: every index is bounds-checked in the kernel against the
        // shapes passed here, which match the buffers (checked at upload).
        unsafe {
            packed_matvec_kernel::launch_unchecked(
                &client,
                count,
                CubeDim::new_2d(DX, DY),
                x.into_tensor_arg(),
                codes.into_buffer_arg(),
                scales.into_buffer_arg(),
                offsets.into_buffer_arg(),
                out_arg,
                rows,
                cols,
                wpr,
                wpg,
                gpr,
                bits,
            )
        };
    } else {
        let count = CubeCount::Static(rows.div_ceil(TN) as u32, tokens.div_ceil(TM) as u32, 1);
        // SAFETY: as above.
        unsafe {
            packed_matmul_kernel::launch_unchecked(
                &client,
                count,
                CubeDim::new_2d(TT as u32, TT as u32),
                x.into_tensor_arg(),
                codes.into_buffer_arg(),
                scales.into_buffer_arg(),
                offsets.into_buffer_arg(),
                out_arg,
                tokens,
                rows,
                cols,
                wpr,
                wpg,
                gpr,
                bits,
            )
        };
    }
    CubeTensor::new_contiguous(client, device, Shape::new([tokens, rows]), out, DType::F32)
}

/// Decode: `out[t, r] = Σ_c x[t, c] · (s·u + o)` with one workgroup per 4
/// rows of one token (`CUBE_POS_Y`).
#[cube(launch_unchecked)]
fn packed_matvec_kernel(
    x: &Tensor<f32>,
    codes: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f32],
    rows: usize,
    cols: usize,
    words_per_row: usize,
    words_per_group: usize,
    groups_per_row: usize,
    #[comptime] bits: u32,
) {
    let cpw = comptime!(32 / bits) as usize;
    let nbits = comptime!(bits as usize);
    let mask = comptime!((1u32 << bits) - 1);
    let tx = UNIT_POS_X as usize;
    let row = CUBE_POS_X as usize * DY as usize + UNIT_POS_Y as usize;
    let token = CUBE_POS_Y as usize;
    let xs1 = x.stride(1);
    let xbase = token * x.stride(0);

    let mut acc = 0f32;
    if row < rows {
        let wbase = row * words_per_row;
        let gbase = row * groups_per_row;
        for w in range_stepped(tx, words_per_row, DX as usize) {
            let word = codes[wbase + w];
            let g = gbase + w / words_per_group;
            let c0 = w * cpw;
            let mut sux = 0f32;
            let mut sx = 0f32;
            #[unroll]
            for j in 0..cpw {
                let c = c0 + j;
                if c < cols {
                    let xv = x[xbase + c * xs1];
                    let shift = j * nbits;
                    let u = f32::cast_from((word >> shift as u32) & mask);
                    sux += u * xv;
                    sx += xv;
                }
            }
            acc += scales[g] * sux + offsets[g] * sx;
        }
    }

    let mut red = Shared::<[f32]>::new_slice(comptime!((DX * DY) as usize));
    let me = UNIT_POS as usize;
    red[me] = acc;
    sync_cube();
    #[unroll]
    for step in 1..7 {
        // 32, 16, 8, 4, 2, 1
        let half = comptime!((DX as usize) >> step);
        if tx < half {
            red[me] += red[me + half];
        }
        sync_cube();
    }
    if tx == 0 && row < rows {
        out[token * rows + row] = red[me];
    }
}

/// Prefill: one `TM × TN` tile of `out [tokens, rows]` per workgroup, the
/// dequantized weights staged `BK` inputs at a time in shared memory.
#[cube(launch_unchecked)]
fn packed_matmul_kernel(
    x: &Tensor<f32>,
    codes: &[u32],
    scales: &[f32],
    offsets: &[f32],
    out: &mut [f32],
    tokens: usize,
    rows: usize,
    cols: usize,
    words_per_row: usize,
    words_per_group: usize,
    groups_per_row: usize,
    #[comptime] bits: u32,
) {
    let cpw = comptime!(32 / bits) as usize;
    let nbits = comptime!(bits as usize);
    let mask = comptime!((1u32 << bits) - 1);
    // Words per tile row and per tile.
    let wtile = comptime!(BK / (32 / bits) as usize);
    let nwords = comptime!(TN * BK / (32 / bits) as usize);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let r0 = CUBE_POS_X as usize * TN;
    let t0 = CUBE_POS_Y as usize * TM;
    let xs0 = x.stride(0);
    let xs1 = x.stride(1);

    let mut xs = Shared::<[f32]>::new_slice(comptime!(TM * PITCH));
    let mut ws = Shared::<[f32]>::new_slice(comptime!(TN * PITCH));
    let mut a00 = 0f32;
    let mut a01 = 0f32;
    let mut a10 = 0f32;
    let mut a11 = 0f32;

    let k_tiles = cols.div_ceil(BK);
    for kt in 0..k_tiles {
        let k0 = kt * BK;
        // The input tile: TM × BK values, 4 per thread.
        #[unroll]
        for i in 0..comptime!(TM * BK / (TT * TT)) {
            let e = tid + i * comptime!(TT * TT);
            let m = e / BK;
            let k = e % BK;
            let t = t0 + m;
            let c = k0 + k;
            let mut v = 0f32;
            if t < tokens && c < cols {
                v = x[t * xs0 + c * xs1];
            }
            xs[m * PITCH + k] = v;
        }
        // The weight tile, dequantized: one code word per thread.
        if tid < nwords {
            let n = tid / wtile;
            let wk = tid % wtile;
            let r = r0 + n;
            let w = k0 / cpw + wk;
            let mut word = 0u32;
            let mut s = 0f32;
            let mut o = 0f32;
            if r < rows && w < words_per_row {
                word = codes[r * words_per_row + w];
                let g = r * groups_per_row + w / words_per_group;
                s = scales[g];
                o = offsets[g];
            }
            let c0 = w * cpw;
            #[unroll]
            for j in 0..cpw {
                let shift = j * nbits;
                let u = f32::cast_from((word >> shift as u32) & mask);
                let mut v = s * u + o;
                if c0 + j >= cols {
                    v = 0f32;
                }
                ws[n * PITCH + wk * cpw + j] = v;
            }
        }
        sync_cube();
        #[unroll]
        for k in 0..BK {
            let x0 = xs[ty * PITCH + k];
            let x1 = xs[(ty + TT) * PITCH + k];
            let w0 = ws[tx * PITCH + k];
            let w1 = ws[(tx + TT) * PITCH + k];
            a00 += x0 * w0;
            a01 += x0 * w1;
            a10 += x1 * w0;
            a11 += x1 * w1;
        }
        sync_cube();
    }

    let ta = t0 + ty;
    let tb = ta + TT;
    let ra = r0 + tx;
    let rb = ra + TT;
    if ta < tokens {
        if ra < rows {
            out[ta * rows + ra] = a00;
        }
        if rb < rows {
            out[ta * rows + rb] = a01;
        }
    }
    if tb < tokens {
        if ra < rows {
            out[tb * rows + ra] = a10;
        }
        if rb < rows {
            out[tb * rows + rb] = a11;
        }
    }
}
