//! The input vector quantized once per call to int8 blocks of 32 (the
//! llama.cpp `Q8` trick), in the order each weight layout wants it.
//!
//! `x` is cut into blocks of [`QK`] values; block `b` gets the scale
//! `dx[b] = max|x| / 127` and the codes `q = round_ties_even(x / dx[b])`
//! (`-127..=127`), so `|x - dx·q| <= dx / 2` element-wise. The kernels then
//! compute integer dot products of weight codes with `q` and scale each
//! block's sum by `dx[b]` (and the weight scale).
//!
//! # Orders
//!
//! * [`Order::Natural`] (int8, `Q8_0`): `q` in the order of `x`.
//! * [`Order::Pairs`] (the crate's int4 layout, byte `i` = elements `2i`,
//!   `2i + 1`) and [`Order::Halves`] (GGUF `Q4_0`/`Q4_1`, byte `i` =
//!   elements `i`, `i + 16`): the values are rearranged per chunk of 4
//!   blocks (128 values) so that one 64-byte load of weight bytes, split into
//!   low and high nibbles, lines up with two 64-byte loads of `q`: chunk `c`
//!   holds at `c·128 + k·16 + i` the value paired with the low nibble of
//!   byte `i` of block `4c + k`, and at `c·128 + 64 + k·16 + i` the value
//!   paired with its high nibble.
//!
//! Everything is padded with zeros to a multiple of [`PAD`] values, so the
//! SIMD kernels can load whole vectors past the end of a row.

use crate::gguf::QK;

/// Values the buffers are padded to (16 blocks).
pub(crate) const PAD: usize = 512;

/// How the weight bytes pair up with input values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// One code per byte, in order.
    Natural,
    /// Nibbles: byte `i` of a 32-block holds elements `2i` (low) and `2i + 1`.
    Pairs,
    /// Nibbles: byte `i` of a 32-block holds elements `i` (low) and `i + 16`.
    Halves,
}

/// `x` quantized to int8 blocks of 32, with the per-block and per-lane sums
/// the kernels need.
pub(crate) struct XQuant {
    /// Codes in the kernel's order, padded with zeros.
    pub q: Vec<i8>,
    /// Scale of each block (0 for padding).
    pub dx: Vec<f32>,
    /// `Σ x` over each block, in `f32` (for the minima of `Q4_1` and
    /// asymmetric int4).
    pub fsum: Vec<f32>,
    /// Per 32-bit lane of the AVX-512 kernels: `-k · Σ` of the codes the lane
    /// multiplies (4 for [`Order::Natural`], 8 for the nibble orders).
    pub lane_off: Vec<i32>,
    /// Per 32-bit lane of the AVX-512 kernels: the `dx` of the lane's block.
    pub dx_lane: Vec<f32>,
}

impl XQuant {
    /// Quantizes `x` for a layout of `order`; `k` is the offset the lane
    /// sums are multiplied by (128 for int8 codes stored `+128`, 8 for
    /// nibbles centred on 8, 0 if unused).
    #[inline(always)]
    pub(crate) fn build(x: &[f32], order: Order, k: i32) -> XQuant {
        let padded = x.len().div_ceil(PAD).max(1) * PAD;
        let nb = padded / QK;
        let lanes = match order {
            Order::Natural => padded / 4,
            Order::Pairs | Order::Halves => padded / 8,
        };
        let mut xq = XQuant {
            q: vec![0i8; padded],
            dx: vec![0f32; nb],
            fsum: vec![0f32; nb],
            lane_off: vec![0i32; lanes],
            dx_lane: vec![0f32; lanes],
        };
        for (b, xb) in x.chunks(QK).enumerate() {
            let mut block = [0f32; QK];
            block[..xb.len()].copy_from_slice(xb);
            let mut n = [0i8; QK];
            let d = quantize_block(&block, &mut n);
            xq.dx[b] = d;
            xq.fsum[b] = block_sum(&block);
            match order {
                Order::Natural => {
                    xq.q[b * QK..(b + 1) * QK].copy_from_slice(&n);
                    // Lanes 8b .. 8b + 8, four codes each.
                    let mut sums = [0i32; 8];
                    for (i, &v) in n.iter().enumerate() {
                        sums[i / 4] += v as i32;
                    }
                    for (j, &s) in sums.iter().enumerate() {
                        xq.lane_off[8 * b + j] = -k * s;
                        xq.dx_lane[8 * b + j] = d;
                    }
                }
                Order::Pairs | Order::Halves => {
                    let (lo, hi): ([i8; 16], [i8; 16]) = if order == Order::Pairs {
                        (
                            std::array::from_fn(|i| n[2 * i]),
                            std::array::from_fn(|i| n[2 * i + 1]),
                        )
                    } else {
                        (n[..16].try_into().unwrap(), n[16..].try_into().unwrap())
                    };
                    let base = (b / 4) * 128 + (b % 4) * 16;
                    xq.q[base..base + 16].copy_from_slice(&lo);
                    xq.q[base + 64..base + 80].copy_from_slice(&hi);
                    // Lanes 16c + 4(b % 4) .. + 4, four low and four high codes each.
                    let mut sums = [0i32; 4];
                    for i in 0..16 {
                        sums[i / 4] += lo[i] as i32 + hi[i] as i32;
                    }
                    let l0 = (b / 4) * 16 + (b % 4) * 4;
                    for (j, &s) in sums.iter().enumerate() {
                        xq.lane_off[l0 + j] = -k * s;
                        xq.dx_lane[l0 + j] = d;
                    }
                }
            }
        }
        xq
    }

    /// The 32 codes of block `b` (natural order only).
    #[inline(always)]
    pub(crate) fn block(&self, b: usize) -> &[i8; QK] {
        self.q[b * QK..(b + 1) * QK].try_into().unwrap()
    }
}

/// `Σ x` with 8 partial sums (vectorizes).
#[inline(always)]
fn block_sum(x: &[f32; QK]) -> f32 {
    let mut p = [0f32; 8];
    for (i, v) in x.iter().enumerate() {
        p[i % 8] += v;
    }
    p.iter().sum()
}

/// Quantizes one block: returns its scale.
#[inline(always)]
fn quantize_block(x: &[f32; QK], q: &mut [i8; QK]) -> f32 {
    // `max` ignores NaN; 8 partial maxima vectorize.
    let mut m = [0f32; 8];
    for (i, v) in x.iter().enumerate() {
        m[i % 8] = m[i % 8].max(v.abs());
    }
    let amax = m.iter().fold(0f32, |a, &b| a.max(b));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    for (o, &v) in q.iter_mut().zip(x) {
        // |v * id| <= 127 anyway; the clamp and the NaN select (NaN inputs
        // give code 0) let the float-to-int conversion vectorize.
        let r = (v * id).round_ties_even().clamp(-127.0, 127.0);
        let r = if r.is_nan() { 0.0 } else { r };
        // SAFETY: `r` is finite and in -127..=127. (`as` would saturate, which
        // LLVM does not vectorize.)
        *o = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    d
}
