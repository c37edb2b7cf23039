//! Plain reference matrix-vector products `y = W · x` for every format:
//! dequantize a row to `f32`, then a sequential `f32` dot product.
//!
//! These are the ground truth for the fast kernels to come, not fast
//! themselves. Each output is summed left to right in `f32`, so the results
//! are bit-identical to [`f32_matvec`] on the dequantized matrix. Rows run
//! in parallel (which does not change any result).

use rayon::prelude::*;

use crate::error::{Result, check_len, checked_len};
use crate::gguf::GgmlMatrix;
use crate::matrix::QuantizedMatrix;

/// `sum_i a[i] * b[i]`, accumulated left to right in `f32`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |acc, (x, y)| acc + x * y)
}

/// `y = W · x` for a row-major `f32` matrix `W[rows, cols]`.
pub fn f32_matvec(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Result<Vec<f32>> {
    check_len("weights", checked_len(rows, cols)?, w.len())?;
    check_len("input vector", cols, x.len())?;
    if cols == 0 {
        return Ok(vec![0.0; rows]);
    }
    Ok(w.par_chunks(cols).map(|row| dot(row, x)).collect())
}

/// `y = W · x` for a matrix in an integer scheme (int8, int4).
pub fn matvec(w: &QuantizedMatrix, x: &[f32]) -> Result<Vec<f32>> {
    check_len("input vector", w.cols(), x.len())?;
    (0..w.rows())
        .into_par_iter()
        .map_init(
            || vec![0f32; w.cols()],
            |row, r| {
                w.dequantize_row_into(r, row)?;
                Ok(dot(row, x))
            },
        )
        .collect()
}

/// `y = W · x` for a matrix in a GGML type (F32, F16, Q8_0, Q4_0, Q4_1).
pub fn ggml_matvec(w: &GgmlMatrix, x: &[f32]) -> Result<Vec<f32>> {
    check_len("input vector", w.cols(), x.len())?;
    (0..w.rows())
        .into_par_iter()
        .map_init(
            || vec![0f32; w.cols()],
            |row, r| {
                w.dequantize_row_into(r, row)?;
                Ok(dot(row, x))
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::matrix::Scheme;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut StdRng, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-amp..amp)).collect()
    }

    #[test]
    fn integer_schemes_equal_dequantize_then_matvec() {
        let mut rng = StdRng::seed_from_u64(3);
        let (rows, cols) = (37, 576);
        let w = random(&mut rng, rows * cols, 0.1);
        let x = random(&mut rng, cols, 1.0);
        for scheme in [
            Scheme::Int8PerChannel,
            Scheme::Int4Sym { group_size: 32 },
            Scheme::Int4Sym { group_size: 64 },
            Scheme::Int4Asym { group_size: 32 },
            Scheme::Int4Asym { group_size: 64 },
        ] {
            let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, scheme).unwrap();
            let y = matvec(&m, &x).unwrap();
            let y_ref = f32_matvec(&m.dequantize(), rows, cols, &x).unwrap();
            assert_eq!(y, y_ref, "{scheme}");
            // And it approximates the unquantized product.
            let y_f32 = f32_matvec(&w, rows, cols, &x).unwrap();
            let err = y
                .iter()
                .zip(&y_f32)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let tol = if scheme.bits() == 8 { 0.01 } else { 0.2 };
            assert!(err < tol, "{scheme}: {err}");
        }
    }

    #[test]
    fn ggml_types_equal_dequantize_then_matvec() {
        let mut rng = StdRng::seed_from_u64(4);
        let (rows, cols) = (29, 256);
        let w = random(&mut rng, rows * cols, 0.1);
        let x = random(&mut rng, cols, 1.0);
        let y_f32 = f32_matvec(&w, rows, cols, &x).unwrap();
        for ty in GgmlType::ALL {
            let m = GgmlMatrix::quantize(ty, &w, rows, cols).unwrap();
            let y = ggml_matvec(&m, &x).unwrap();
            let y_ref = f32_matvec(&m.dequantize(), rows, cols, &x).unwrap();
            assert_eq!(y, y_ref, "{ty}");
            if ty == GgmlType::F32 {
                assert_eq!(y, y_f32);
            }
            let err = y
                .iter()
                .zip(&y_f32)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 0.2, "{ty}: {err}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let m = QuantizedMatrix::quantize_rtn(&[0.0; 64], 2, 32, Scheme::Int8PerChannel).unwrap();
        assert!(matvec(&m, &[0.0; 31]).is_err());
        let g = GgmlMatrix::quantize(GgmlType::Q4_0, &[0.0; 64], 2, 32).unwrap();
        assert!(ggml_matvec(&g, &[0.0; 33]).is_err());
        assert!(f32_matvec(&[0.0; 6], 2, 3, &[0.0; 2]).is_err());
        assert!(f32_matvec(&[0.0; 5], 2, 3, &[0.0; 3]).is_err());
        assert_eq!(f32_matvec(&[], 2, 0, &[]).unwrap(), [0.0, 0.0]);
        assert_eq!(
            f32_matvec(&[1.0, 2.0, 3.0, 4.0], 2, 2, &[1.0, -1.0]).unwrap(),
            [-1.0, -1.0]
        );
    }
}
