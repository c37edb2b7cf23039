//! Row kernels written so the compiler vectorizes them, compiled for AVX-512 and AVX2 beside
//! the baseline and chosen at run time.

use std::mem::MaybeUninit;

/// Defines `fn name(args) -> ret` whose body is compiled three times (AVX-512F, AVX2+FMA and
/// the baseline target) and dispatched on the CPU's features.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Independent accumulators per pass, so the compiler vectorizes the loops.
const LANES: usize = 16;

#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut m = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    tail.iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[inline(always)]
fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut s = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            s[i] += exp(c[i] - shift);
        }
    }
    s.iter().sum::<f32>() + tail.iter().map(|&v| exp(v - shift)).sum::<f32>()
}

/// The maximum of a row that cannot shift it: all −∞ (the shifted sum would be NaN), or a +∞
/// that dominates; NaN when the row has one.
fn unshiftable(x: &[f32], max: f32) -> f32 {
    if x.iter().any(|v| v.is_nan()) {
        f32::NAN
    } else {
        max
    }
}

multiversion! {
    /// `ln Σ exp(x)`, shifted by the maximum: two passes.
    pub fn log_sum_exp(x: &[f32]) -> f32 {
        let max = row_max(x);
        if !max.is_finite() {
            return unshiftable(x, max);
        }
        max + sum_exp(x, max).ln()
    }
}

multiversion! {
    /// `Σ exp(x − shift)`: the normalizer of a softmax whose log-sum-exp is near `shift`.
    pub fn exp_sum(x: &[f32], shift: f32) -> f32 {
        sum_exp(x, shift)
    }
}

multiversion! {
    /// `x ← g · exp(x − shift)`.
    pub fn scaled_exp(x: &mut [f32], shift: f32, g: f32) {
        for v in x {
            *v = g * exp(*v - shift);
        }
    }
}

multiversion! {
    /// `x ← softmax(x)`: the maximum, then `exp` with its sum, then the scale. A row whose
    /// maximum is infinite becomes NaN, as burn's composed softmax makes it.
    pub fn softmax(x: &mut [f32]) {
        let max = row_max(x);
        let n = x.len() / LANES * LANES;
        let mut s = [0f32; LANES];
        for c in x[..n].chunks_exact_mut(LANES) {
            for i in 0..LANES {
                c[i] = exp(c[i] - max);
                s[i] += c[i];
            }
        }
        let mut sum = s.iter().sum::<f32>();
        for v in &mut x[n..] {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in x {
            *v *= inv;
        }
    }
}

multiversion! {
    /// `g ← y ⊙ (g − Σ g ⊙ y)`: softmax's backward for output `y` and output gradient `g`.
    pub fn softmax_backward(y: &[f32], g: &mut [f32]) {
        let mut d = [0f32; LANES];
        let n = y.len() / LANES * LANES;
        for (yc, gc) in y[..n].chunks_exact(LANES).zip(g[..n].chunks_exact(LANES)) {
            for i in 0..LANES {
                d[i] += yc[i] * gc[i];
            }
        }
        let dot = d.iter().sum::<f32>() + y[n..].iter().zip(&g[n..]).map(|(a, b)| a * b).sum::<f32>();
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - dot);
        }
    }
}

/// `σ(x) = 1 / (1 + e⁻ˣ)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

multiversion! {
    /// `out = silu(gate) ⊙ up`.
    pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((o, &u), &g) in out.iter_mut().zip(up).zip(gate) {
            o.write(u * g * sigmoid(g));
        }
    }
}

multiversion! {
    /// `(d_gate, d_up) = (g ⊙ up ⊙ σ(gate)(1 + gate(1 − σ(gate))), g ⊙ silu(gate))`: the
    /// gradients of `silu(gate) ⊙ up` for the output gradient `g`.
    pub fn swiglu_backward(
        gate: &[f32],
        up: &[f32],
        g: &[f32],
        d_gate: &mut [MaybeUninit<f32>],
        d_up: &mut [MaybeUninit<f32>],
    ) {
        let outputs = d_gate.iter_mut().zip(d_up.iter_mut());
        for ((dg, du), ((&a, &u), &g)) in outputs.zip(gate.iter().zip(up).zip(g)) {
            let s = sigmoid(a);
            du.write(g * a * s);
            dg.write(g * u * s * (1.0 + a * (1.0 - s)));
        }
    }
}

#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut s = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            s[i] += c[i] * c[i];
        }
    }
    s.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()
}

/// `Σ a ⊙ b ⊙ c`.
#[inline(always)]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len() / LANES * LANES;
    let mut s = [0f32; LANES];
    for ((a, b), c) in a[..n]
        .chunks_exact(LANES)
        .zip(b[..n].chunks_exact(LANES))
        .zip(c[..n].chunks_exact(LANES))
    {
        for i in 0..LANES {
            s[i] += a[i] * b[i] * c[i];
        }
    }
    let tail = a[n..].iter().zip(&b[n..]).zip(&c[n..]);
    s.iter().sum::<f32>() + tail.map(|((a, b), c)| a * b * c).sum::<f32>()
}

/// `1 / sqrt(mean(x²) + eps)`.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt()
}

multiversion! {
    /// `x ← x · r ⊙ w` for each row of `x` (rows of `w.len()`), `r = 1 / sqrt(mean(x²) + eps)`.
    pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
        for row in x.chunks_exact_mut(w.len()) {
            let r = inv_rms(row, eps);
            for (v, &w) in row.iter_mut().zip(w) {
                *v = *v * r * w;
            }
        }
    }
}

multiversion! {
    /// RMSNorm's backward for rows of `x` and their output gradients `g`: `g ← r·g⊙w −
    /// x·(r³/n)·Σ g⊙w⊙x`, and each row's `g ⊙ x·r` added to `dw`.
    pub fn rms_norm_backward(x: &[f32], w: &[f32], g: &mut [f32], dw: &mut [f32], eps: f32) {
        let n = w.len();
        for (x, g) in x.chunks_exact(n).zip(g.chunks_exact_mut(n)) {
            let r = inv_rms(x, eps);
            let c = r * r * r / n as f32 * dot3(g, w, x);
            for (((g, &x), &w), dw) in g.iter_mut().zip(x).zip(w).zip(dw.iter_mut()) {
                *dw += *g * x * r;
                *g = r * *g * w - x * c;
            }
        }
    }
}

multiversion! {
    /// `x ← x ⊙ cos + rotate_half(x) ⊙ sin` for each row of `d` values, `rotate_half([x₁, x₂]) =
    /// [−x₂, x₁]`, with the rows of `cos` and `sin` beside those of `x`.
    pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], d: usize) {
        let h = d / 2;
        for ((x, c), s) in x.chunks_exact_mut(d).zip(cos.chunks_exact(d)).zip(sin.chunks_exact(d)) {
            let (x1, x2) = x.split_at_mut(h);
            let ((c1, c2), (s1, s2)) = (c.split_at(h), s.split_at(h));
            for (((((a, b), &c1), &c2), &s1), &s2) in
                x1.iter_mut().zip(x2).zip(c1).zip(c2).zip(s1).zip(s2)
            {
                (*a, *b) = (*a * c1 - *b * s1, *b * c2 + *a * s2);
            }
        }
    }
}

multiversion! {
    /// `g ← g ⊙ cos + rotate_half⊤(g ⊙ sin)`, `rotate_half⊤([u₁, u₂]) = [u₂, −u₁]`: [`rope`]'s
    /// backward for the output gradient `g`.
    pub fn rope_backward(g: &mut [f32], cos: &[f32], sin: &[f32], d: usize) {
        let h = d / 2;
        for ((g, c), s) in g.chunks_exact_mut(d).zip(cos.chunks_exact(d)).zip(sin.chunks_exact(d)) {
            let (g1, g2) = g.split_at_mut(h);
            let ((c1, c2), (s1, s2)) = (c.split_at(h), s.split_at(h));
            for (((((a, b), &c1), &c2), &s1), &s2) in
                g1.iter_mut().zip(g2).zip(c1).zip(c2).zip(s1).zip(s2)
            {
                (*a, *b) = (*a * c1 + *b * s2, *b * c2 - *a * s1);
            }
        }
    }
}

/// `eˣ`, branch-free so it vectorizes: Cephes' `expf` (range reduction by ln 2 in two parts, a
/// degree-5 polynomial, the exponent set by bit arithmetic), within 2 ulp of `f32::exp` on
/// `[-87, 88]`; 0 below `-87.3`, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.33;
    let x = x.clamp(-87.33, 88.72);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // 2ⁿ from t's low mantissa bits, which hold n + 1.5·2²³'s own: integer arithmetic that
    // vectorizes, where `n as i32` (saturating, NaN to 0) compiles to a scalar loop.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if underflow { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs() as f32;
            worst = worst.max(ulp);
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    fn row(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect()
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        for n in [1usize, 7, 16, 33, 1000] {
            let x = row(n);
            let max = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let want = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            let got = log_sum_exp(&x) as f64;
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{n}: {got} vs {want}"
            );
        }
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
        assert!(log_sum_exp(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn softmax_and_its_backward_match_f64() {
        for n in [1usize, 5, 16, 37, 300] {
            let x = row(n);
            let max = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let want: Vec<f64> = e.iter().map(|v| v / sum).collect();
            let mut y = x.clone();
            softmax(&mut y);
            for (a, b) in y.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-6, "{n}: {a} vs {b}");
            }
            let g: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
            let dot: f64 = want.iter().zip(&g).map(|(y, &g)| y * g as f64).sum();
            let mut dx = g.clone();
            softmax_backward(&y, &mut dx);
            for ((a, &y), &g) in dx.iter().zip(&want).zip(&g) {
                let b = y * (g as f64 - dot);
                assert!((*a as f64 - b).abs() < 1e-5, "{n}: {a} vs {b}");
            }
        }
        let mut x = [1.0, f32::NEG_INFINITY, 1.0];
        softmax(&mut x);
        assert_eq!(x, [0.5, 0.0, 0.5]);
    }
}
