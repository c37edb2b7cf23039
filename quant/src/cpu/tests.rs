//! Tests of the CPU kernels against `reference` on every format, shape and
//! available instruction set.
//!
//! Tolerances (`ŵ` the dequantized weight, `x̃_j = Δ_b q_j` the input on its
//! int8 grid, `Δ_b = max_{j∈b}|x_j| / 127` per block `b` of 32):
//!
//! * `matvec` vs a model of its arithmetic (`Σ_j (ŵ_j - c_b) x̃_j + c_b Σ_j x_j`
//!   in `f64`, where `c_b = m_b + 8 d_b` for `Q4_1` and asymmetric int4 (the
//!   block's or group's minimum and step) and 0 otherwise):
//!   `|y - y_model| <= 2e-5 · Σ_j|ŵ_j x̃_j| + 1e-6` (pure `f32` rounding: the
//!   integer parts are exact).
//! * `matvec` vs `reference::matvec`/`ggml_matvec` (dequantize, exact-input
//!   dot): `|y - y_ref| <= ½ Σ_b Δ_b Σ_{j∈b}|ŵ_j - c_b| + 1e-4 · Σ_j|ŵ_j x_j|`
//!   (the rounding of `x` to its grid, plus `f32` rounding of both sides).
//! * `matmul` with more than `SMALL_BATCH` (8) tokens and the `f32` kernels
//!   vs the reference: `|y - y_ref| <= 1e-4 · Σ_j|ŵ_j x_j| + 1e-6` (`f32`
//!   rounding only); `matmul` with up to 8 tokens runs the `matvec` kernels
//!   and gets their bounds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::QuantError;
use crate::gguf::QK;
use crate::reference;

/// Every packed format the kernels implement.
fn formats() -> Vec<crate::Format> {
    crate::Format::all()
}

/// `(rows, cols)`: SmolLM2's 576→576, 576→1536, 1536→576, odd row counts,
/// a single row, a few blocks.
const SHAPES: [(usize, usize); 8] = [
    (576, 576),
    (1536, 576),
    (576, 1536),
    (37, 256),
    (13, 640),
    (1, 32),
    (3, 96),
    (301, 384),
];

fn random(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// A weight matrix with a few outliers and an all-zero row.
fn weights(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = random(rng, rows * cols, 0.1);
    for _ in 0..(rows * cols / 500).max(1) {
        let i = rng.random_range(0..w.len());
        w[i] = rng.random_range(-1.0..1.0);
    }
    if rows > 2 {
        w[cols..2 * cols].fill(0.0);
    }
    w
}

/// An input vector with an outlier, an all-zero block and a tiny block.
fn input(rng: &mut StdRng, cols: usize) -> Vec<f32> {
    let mut x = random(rng, cols, 1.0);
    x[cols / 2] = 9.0;
    if cols >= 96 {
        x[32..64].fill(0.0);
        for v in &mut x[64..96] {
            *v *= 1e-6;
        }
    }
    x
}

/// The input on its int8 grid, as the kernels round it: `(Δ_b, x̃)`.
fn x_grid(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut deltas = Vec::new();
    let mut xt = Vec::with_capacity(x.len());
    for b in x.chunks(QK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        deltas.push(d);
        xt.extend(b.iter().map(|&v| d * (v * id).round_ties_even()));
    }
    (deltas, xt)
}

fn reference_matvec(w: &PackedMatrix, x: &[f32]) -> Vec<f32> {
    match w {
        PackedMatrix::Int(m) => reference::matvec(m, x).unwrap(),
        PackedMatrix::Ggml(m) => reference::ggml_matvec(m, x).unwrap(),
    }
}

/// The centre `m + 8d` the kernels take block `b` of row `r` around: `Q4_1`'s
/// and asymmetric int4's (of the block's group); `None` for the other formats.
fn centre(w: &PackedMatrix, r: usize, b: usize) -> Option<f32> {
    match w {
        PackedMatrix::Ggml(m) if m.ty() == GgmlType::Q4_1 => {
            let row = m.row(r).unwrap();
            let f = |i: usize| {
                half::f16::from_le_bytes([row[20 * b + i], row[20 * b + i + 1]]).to_f32()
            };
            Some(f(2) + 8.0 * f(0))
        }
        PackedMatrix::Int(m) if m.scheme().is_asymmetric() => {
            let (cols, g) = (m.cols(), m.scheme().group_size(m.cols()));
            let k = r * (cols / g) + b * QK / g;
            Some(m.mins()[k] + 8.0 * m.scales()[k])
        }
        _ => None,
    }
}

/// `matvec` of `w` with every instruction set this machine has, each checked by
/// [`check_matvec`].
fn check_every_isa(w: &PackedMatrix, x: &[f32], what: &str) {
    for isa in Isa::available() {
        let mut y = vec![f32::NAN; w.rows()];
        matvec_with(isa, w, x, &mut y).unwrap();
        check_matvec(w, x, &y, &format!("{what} {isa:?}"));
    }
}

/// Checks `y` (from `matvec`) against its arithmetic model and the reference.
fn check_matvec(w: &PackedMatrix, x: &[f32], y: &[f32], what: &str) {
    let (rows, cols) = (w.rows(), w.cols());
    let deq = w.dequantize();
    let y_ref = reference_matvec(w, x);
    let (deltas, xt) = x_grid(x);
    for r in 0..rows {
        let row = &deq[r * cols..(r + 1) * cols];
        let (mut model, mut mag_t, mut mag, mut grid_err) = (0f64, 0f64, 0f64, 0f64);
        for (b, ((wb, xb), xtb)) in row
            .chunks(QK)
            .zip(x.chunks(QK))
            .zip(xt.chunks(QK))
            .enumerate()
        {
            let m = centre(w, r, b).unwrap_or(0.0) as f64;
            for ((&wv, &xv), &tv) in wb.iter().zip(xb).zip(xtb) {
                model += (wv as f64 - m) * tv as f64 + m * xv as f64;
                mag_t += (wv as f64 * tv as f64).abs();
                mag += (wv as f64 * xv as f64).abs();
                grid_err += 0.5 * deltas[b] as f64 * (wv as f64 - m).abs();
            }
        }
        let got = y[r] as f64;
        let tol_model = 2e-5 * mag_t + 1e-6;
        assert!(
            (got - model).abs() <= tol_model,
            "{what} row {r}: {got} vs model {model} (tol {tol_model})"
        );
        let tol_ref = grid_err + 1e-4 * mag;
        assert!(
            (got - y_ref[r] as f64).abs() <= tol_ref,
            "{what} row {r}: {got} vs reference {} (tol {tol_ref})",
            y_ref[r]
        );
    }
}

#[test]
fn every_isa_is_tested_here() {
    let isas = Isa::available();
    assert_eq!(isas[0], Isa::Portable);
    assert_eq!(Isa::best(), *isas.last().unwrap());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw") {
        assert_eq!(Isa::best(), Isa::Avx512Vnni);
    }
    eprintln!("instruction sets tested: {isas:?}");
}

#[test]
fn matvec_matches_reference_for_every_format_shape_and_isa() {
    let mut rng = StdRng::seed_from_u64(1);
    for (rows, cols) in SHAPES {
        let wf = weights(&mut rng, rows, cols);
        let x = input(&mut rng, cols);
        for f in formats() {
            if f.validate(cols).is_err() {
                continue;
            }
            let w = PackedMatrix::quantize_rtn(&wf, rows, cols, f).unwrap();
            check_every_isa(&w, &x, &format!("{f} {rows}x{cols}"));
            let mut y = vec![0.0; rows];
            matvec(&w, &x, &mut y).unwrap();
            check_matvec(&w, &x, &y, &format!("{f} {rows}x{cols} best"));
        }
    }
}

/// int8 rows of any length (not a multiple of 32 or 64): the masked tails.
#[test]
fn int8_matvec_odd_column_counts() {
    let mut rng = StdRng::seed_from_u64(2);
    for cols in [1, 5, 31, 33, 63, 64, 65, 100, 127, 129, 200, 577] {
        let rows = 7;
        let wf = weights(&mut rng, rows, cols);
        let x = random(&mut rng, cols, 2.0);
        let w =
            PackedMatrix::quantize_rtn(&wf, rows, cols, crate::Format::Int(Scheme::Int8PerChannel))
                .unwrap();
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; rows];
            matvec_with(isa, &w, &x, &mut y).unwrap();
            check_matvec(&w, &x, &y, &format!("int8 {rows}x{cols} {isa:?}"));
        }
    }
}

/// Codes at the ends of every range (int8 -128, int4 sym nibble 0 = -8,
/// asym 0 and 15 with minima on either side of 0, GGUF nibbles 0 and 15)
/// and inputs of ±127 codes.
#[test]
fn extreme_codes() {
    let (rows, cols) = (5, 256);
    let mut x: Vec<f32> = (0..cols)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    x[7] = 0.0;
    for isa in Isa::available() {
        // int8 / int4 from codes.
        for scheme in [
            Scheme::Int8PerChannel,
            Scheme::Int4Sym { group_size: 32 },
            Scheme::Int4Asym { group_size: 64 },
        ] {
            let (lo, hi) = scheme.code_range();
            let codes: Vec<i8> = (0..rows * cols)
                .map(|i| if (i / 3) % 2 == 0 { lo } else { hi })
                .collect();
            let gpr = scheme.groups_per_row(cols);
            let scales = vec![0.5; rows * gpr];
            let mins = if scheme.is_asymmetric() {
                (0..rows * gpr)
                    .map(|i| ((i * 5 % 16) as f32 - 9.0) * 0.75)
                    .collect()
            } else {
                vec![]
            };
            let m = crate::QuantizedMatrix::from_codes(rows, cols, scheme, &codes, scales, mins)
                .unwrap();
            let w = PackedMatrix::Int(m);
            let mut y = vec![0.0; rows];
            matvec_with(isa, &w, &x, &mut y).unwrap();
            check_matvec(&w, &x, &y, &format!("{scheme} extremes {isa:?}"));
        }
        // GGUF: all-0x00 and all-0xff code bytes with a scale of 1.
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bs = ty.type_size();
            let mut data = vec![0u8; rows * cols / QK * bs];
            for (i, blk) in data.chunks_exact_mut(bs).enumerate() {
                let fill = if i % 2 == 0 { 0x00 } else { 0xff };
                blk.fill(fill);
                blk[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    blk[2..4].copy_from_slice(&half::f16::from_f32(-0.25).to_le_bytes());
                }
            }
            let w = PackedMatrix::Ggml(GgmlMatrix::from_bytes(ty, rows, cols, data).unwrap());
            let mut y = vec![0.0; rows];
            matvec_with(isa, &w, &x, &mut y).unwrap();
            check_matvec(&w, &x, &y, &format!("{ty} extremes {isa:?}"));
        }
    }
}

/// Affine grids (asymmetric int4, `Q4_1`) on rows whose groups sit away from
/// 0 (all positive or all negative, a large minimum against a small step):
/// the minimum's part `(m + 8d)·Σx` carries most of each product.
#[test]
fn affine_groups_away_from_zero() {
    let mut rng = StdRng::seed_from_u64(7);
    for (rows, cols) in [(19, 576), (5, 384)] {
        let mut wf = random(&mut rng, rows * cols, 0.05);
        for (r, row) in wf.chunks_mut(cols).enumerate() {
            let shift = [0.6, -0.4, 2.0, -3.0, 0.0][r % 5];
            row.iter_mut().for_each(|v| *v += shift);
        }
        let x = input(&mut rng, cols);
        for f in ["int4-asym-g32", "int4-asym-g64", "int4-asym-g128", "q4_1"] {
            let f: crate::Format = f.parse().unwrap();
            if f.validate(cols).is_err() {
                continue;
            }
            let w = PackedMatrix::quantize_rtn(&wf, rows, cols, f).unwrap();
            check_every_isa(&w, &x, &format!("{f} shifted {rows}x{cols}"));
        }
    }
}

/// The GGML float types take the generic dequantize-then-dot path.
#[test]
fn ggml_float_types_work() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (9, 48);
    let wf = weights(&mut rng, rows, cols);
    let x = input(&mut rng, cols);
    for ty in [GgmlType::F32, GgmlType::F16] {
        let w = PackedMatrix::Ggml(GgmlMatrix::quantize(ty, &wf, rows, cols).unwrap());
        let y_ref = reference_matvec(&w, &x);
        let mut y = vec![0.0; rows];
        matvec(&w, &x, &mut y).unwrap();
        assert_close(&y, &y_ref, &w.dequantize(), &x, cols, &format!("{ty}"));
        let x3: Vec<f32> = x.iter().chain(&x).chain(&x).copied().collect();
        let mut y3 = vec![0.0; 3 * rows];
        matmul(&w, &x3, 3, &mut y3).unwrap();
        for t in 0..3 {
            assert_close(
                &y3[t * rows..(t + 1) * rows],
                &y_ref,
                &w.dequantize(),
                &x,
                cols,
                "f16 mm",
            );
        }
    }
}

/// `|y - y_ref| <= 1e-4 · Σ|w x| + 1e-6` per row.
fn assert_close(y: &[f32], y_ref: &[f32], w: &[f32], x: &[f32], cols: usize, what: &str) {
    assert_eq!(y.len(), y_ref.len());
    for (r, (&a, &b)) in y.iter().zip(y_ref).enumerate() {
        let mag: f64 = w[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(&w, &x)| (w as f64 * x as f64).abs())
            .sum();
        let tol = 1e-4 * mag + 1e-6;
        assert!(
            (a as f64 - b as f64).abs() <= tol,
            "{what} row {r}: {a} vs {b} (tol {tol})"
        );
    }
}

#[test]
fn matmul_matches_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    for (rows, cols) in [(576, 576), (301, 384), (37, 256), (1536, 576)] {
        let wf = weights(&mut rng, rows, cols);
        for f in formats() {
            if f.validate(cols).is_err() {
                continue;
            }
            let w = PackedMatrix::quantize_rtn(&wf, rows, cols, f).unwrap();
            let deq = w.dequantize();
            for tokens in [1, 3, 8, 9, 17, 64] {
                let x: Vec<f32> = (0..tokens).flat_map(|_| input(&mut rng, cols)).collect();
                for isa in Isa::available() {
                    let mut y = vec![f32::NAN; tokens * rows];
                    matmul_with(isa, &w, &x, tokens, &mut y).unwrap();
                    for t in 0..tokens {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let yt = &y[t * rows..(t + 1) * rows];
                        let what = format!("{f} {rows}x{cols} tokens {tokens} {isa:?} t{t}");
                        if tokens <= SMALL_BATCH {
                            check_matvec(&w, xt, yt, &what);
                        } else {
                            assert_close(yt, &reference_matvec(&w, xt), &deq, xt, cols, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn f32_kernels_match_reference() {
    let mut rng = StdRng::seed_from_u64(5);
    for (rows, cols) in [
        (1, 1),
        (3, 15),
        (5, 17),
        (7, 63),
        (9, 64),
        (11, 65),
        (576, 576),
        (129, 1000),
        (2, 4097),
    ] {
        let w = random(&mut rng, rows * cols, 1.0);
        let x = random(&mut rng, cols, 1.0);
        let y_ref = reference::f32_matvec(&w, rows, cols, &x).unwrap();
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; rows];
            f32_matvec_with(isa, &w, rows, cols, &x, &mut y).unwrap();
            assert_close(
                &y,
                &y_ref,
                &w,
                &x,
                cols,
                &format!("f32 {rows}x{cols} {isa:?}"),
            );
        }
        for tokens in [1, 3, 17] {
            let xs: Vec<f32> = (0..tokens)
                .flat_map(|_| random(&mut rng, cols, 1.0))
                .collect();
            let mut y = vec![f32::NAN; tokens * rows];
            f32_matmul(&w, rows, cols, &xs, tokens, &mut y).unwrap();
            for t in 0..tokens {
                let xt = &xs[t * cols..(t + 1) * cols];
                let yr = reference::f32_matvec(&w, rows, cols, xt).unwrap();
                assert_close(
                    &y[t * rows..(t + 1) * rows],
                    &yr,
                    &w,
                    xt,
                    cols,
                    "f32 matmul",
                );
            }
        }
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    let wf = vec![0.25f32; 4 * 64];
    let x = vec![1.0f32; 64];
    for f in formats() {
        if f.validate(64).is_err() {
            continue;
        }
        let w = PackedMatrix::quantize_rtn(&wf, 4, 64, f).unwrap();
        let mut y = vec![0.0; 4];
        assert!(matches!(
            matvec(&w, &x[..63], &mut y),
            Err(QuantError::Length { .. })
        ));
        assert!(matches!(
            matvec(&w, &x, &mut y[..3]),
            Err(QuantError::Length { .. })
        ));
        assert!(matvec(&w, &x, &mut [0.0; 5]).is_err());
        assert!(matmul(&w, &x, 2, &mut [0.0; 8]).is_err());
        assert!(matmul(&w, &[x.clone(), x.clone()].concat(), 2, &mut [0.0; 7]).is_err());
        assert!(matmul(&w, &x, usize::MAX, &mut y).is_err());
        matmul(&w, &[], 0, &mut []).unwrap();
        matvec(&w, &x, &mut y).unwrap();
        assert!(y.iter().all(|v| (v - 16.0).abs() < 0.2), "{f}: {y:?}");
    }
    let mut y = vec![0.0; 4];
    assert!(f32_matvec(&wf[..255], 4, 64, &x, &mut y).is_err());
    assert!(f32_matvec(&wf, 4, 64, &x[..1], &mut y).is_err());
    assert!(f32_matvec(&wf, 4, 64, &x, &mut y[..1]).is_err());
    assert!(f32_matvec(&wf, usize::MAX, 2, &x, &mut y).is_err());
    assert!(f32_matmul(&wf, 4, 64, &x, 2, &mut y).is_err());
    assert!(f32_matmul(&wf, 4, 64, &x, 1, &mut y[..3]).is_err());
    // Empty shapes.
    f32_matvec(&[], 0, 64, &x, &mut []).unwrap();
    let mut y2 = vec![1.0; 2];
    f32_matvec(&[], 2, 0, &[], &mut y2).unwrap();
    assert_eq!(y2, [0.0, 0.0]);
    let g = PackedMatrix::Ggml(GgmlMatrix::from_bytes(GgmlType::Q4_0, 3, 0, vec![]).unwrap());
    let mut y3 = vec![1.0; 3];
    matvec(&g, &[], &mut y3).unwrap();
    assert_eq!(y3, [0.0; 3]);
    let mut y6 = vec![1.0; 6];
    matmul(&g, &[], 2, &mut y6).unwrap();
    assert_eq!(y6, [0.0; 6]);
}

/// Non-finite inputs give non-finite outputs, never a panic.
#[test]
fn non_finite_input_does_not_panic() {
    let wf = vec![0.25f32; 2 * 64];
    for f in formats() {
        let Ok(w) = PackedMatrix::quantize_rtn(&wf, 2, 64, f) else {
            continue;
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = vec![1.0f32; 64];
            x[3] = bad;
            for isa in Isa::available() {
                let mut y = vec![0.0; 2];
                matvec_with(isa, &w, &x, &mut y).unwrap();
            }
        }
    }
}

/// The inlined `f16` conversion is exact for every bit pattern.
#[test]
fn f16_conversion_is_exact() {
    for h in 0..=u16::MAX {
        let want = half::f16::from_bits(h).to_f32();
        let got = portable::f16_to_f32(h);
        if want.is_nan() {
            assert!(got.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }
}

/// The panel dequantization equals `PackedMatrix::dequantize` bit for bit.
#[test]
fn panel_dequantization_is_exact() {
    let mut rng = StdRng::seed_from_u64(6);
    let (rows, cols) = (7, 256);
    let wf = weights(&mut rng, rows, cols);
    for f in formats() {
        let w = PackedMatrix::quantize_rtn(&wf, rows, cols, f).unwrap();
        let view = View::of(&w).ok().unwrap();
        let want = w.dequantize();
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; (rows - 2) * cols];
            packed_gemm::dequantize_rows(isa, view, cols, 2, &mut got);
            assert!(
                got.iter()
                    .zip(&want[2 * cols..])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{f} {isa:?}"
            );
        }
    }
}
