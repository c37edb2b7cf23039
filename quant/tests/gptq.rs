//! GPTQ against RTN on single random layers with correlated inputs, for
//! every format.
//!
//! The inputs are `X = Z A` with a random mixing `A` (so `H = 2 XᵀX / N` is
//! far from diagonal) and a few outlier channels; the error measured is the
//! output error `||(W - Ŵ) Xᵀ||²` on those calibration inputs, computed
//! directly in `f64`.

use std::time::Instant;

use distill_quant::grid::ScaleSearch;
use distill_quant::{Format, GptqConfig, GptqResult, Grid, Hessian, PackedMatrix, gptq_quantize};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FORMATS: [&str; 10] = [
    "int8",
    "int4-sym-g32",
    "int4-sym-g64",
    "int4-sym-g128",
    "int4-asym-g32",
    "int4-asym-g64",
    "int4-asym-g128",
    "q8_0",
    "q4_0",
    "q4_1",
];

const ROWS: usize = 48;
const COLS: usize = 256;
const TOKENS: usize = 1024;

struct Layer {
    w: Vec<f32>,
    x: Vec<f32>,
    h: Hessian,
}

fn layer(seed: u64) -> Layer {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut u = |s: f32| rng.random_range(-1.0f32..1.0) * s;
    let z: Vec<f32> = (0..TOKENS * COLS).map(|_| u(1.0)).collect();
    let a: Vec<f32> = (0..COLS * COLS)
        .map(|i| u(1.0) + if i / COLS == i % COLS { 2.0 } else { 0.0 })
        .collect();
    let mut x = vec![0f32; TOKENS * COLS];
    for t in 0..TOKENS {
        for k in 0..COLS {
            let zk = z[t * COLS + k];
            for (xo, &ak) in x[t * COLS..(t + 1) * COLS].iter_mut().zip(&a[k * COLS..]) {
                *xo += zk * ak;
            }
        }
    }
    // A few outlier channels.
    for t in 0..TOKENS {
        for c in (7..COLS).step_by(61) {
            x[t * COLS + c] *= 12.0;
        }
    }
    let w: Vec<f32> = (0..ROWS * COLS)
        .map(|i| u(0.05) * if i % 211 == 3 { 8.0 } else { 1.0 })
        .collect();
    let mut h = Hessian::new(COLS);
    // Two batches, as a caller streaming activations would.
    h.add(&x[..300 * COLS], 300).unwrap();
    h.add(&x[300 * COLS..], TOKENS - 300).unwrap();
    Layer { w, x, h }
}

/// `||(W - Ŵ) Xᵀ||²`.
fn output_error(l: &Layer, q: &[f32]) -> f64 {
    let e: Vec<f64> = l.w.iter().zip(q).map(|(a, b)| (a - b) as f64).collect();
    let mut total = 0.0;
    for t in 0..TOKENS {
        let x = &l.x[t * COLS..(t + 1) * COLS];
        for r in 0..ROWS {
            let y: f64 = e[r * COLS..(r + 1) * COLS]
                .iter()
                .zip(x)
                .map(|(e, &x)| e * x as f64)
                .sum();
            total += y * y;
        }
    }
    total
}

fn run(l: &Layer, f: Format, config: &GptqConfig) -> GptqResult {
    let r = gptq_quantize(&l.w, ROWS, COLS, &l.h, f, config).unwrap();
    assert_eq!(r.packed.format(), f);
    let deq = r.packed.dequantize();
    assert!(
        deq.iter()
            .zip(&r.dequantized)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{f}: the packed matrix is not what GPTQ evaluated"
    );
    assert!(!r.stats.hessian_fallback && r.stats.damp_retries == 0);
    assert_eq!(r.stats.dead_columns, 0);
    assert!(r.stats.loss.is_finite() && r.stats.loss > 0.0);
    r
}

fn beats_rtn(config: &GptqConfig) {
    for seed in 0..5 {
        let l = layer(seed);
        for name in FORMATS {
            let f: Format = name.parse().unwrap();
            let r = run(&l, f, config);
            let rtn = PackedMatrix::quantize_rtn(&l.w, ROWS, COLS, f).unwrap();
            let (g, q) = (
                output_error(&l, &r.dequantized),
                output_error(&l, &rtn.dequantize()),
            );
            assert!(
                g < 0.8 * q,
                "{name} seed {seed} {config:?}: gptq {g} rtn {q}"
            );
        }
    }
}

#[test]
fn gptq_beats_rtn_on_every_format() {
    beats_rtn(&GptqConfig::default());
}

#[test]
fn act_order_beats_rtn_on_every_format() {
    beats_rtn(&GptqConfig {
        act_order: true,
        ..GptqConfig::default()
    });
}

#[test]
fn other_settings_pack_exactly_and_beat_rtn() {
    let l = layer(42);
    for config in [
        GptqConfig {
            static_groups: true,
            ..GptqConfig::default()
        },
        GptqConfig {
            block_size: 7,
            ..GptqConfig::default()
        },
        GptqConfig {
            block_size: 1000,
            damp: 0.1,
            ..GptqConfig::default()
        },
    ] {
        for name in FORMATS {
            let f: Format = name.parse().unwrap();
            let r = run(&l, f, &config);
            let rtn = PackedMatrix::quantize_rtn(&l.w, ROWS, COLS, f).unwrap();
            let (g, q) = (
                output_error(&l, &r.dequantized),
                output_error(&l, &rtn.dequantize()),
            );
            assert!(g < 0.8 * q, "{name} {config:?}: gptq {g} rtn {q}");
        }
    }
}

fn searched(config: GptqConfig) -> GptqConfig {
    GptqConfig {
        scale_search: Some(ScaleSearch::default()),
        ..config
    }
}

fn weighted_search(config: GptqConfig) -> GptqConfig {
    GptqConfig {
        weighted_search: true,
        ..searched(config)
    }
}

#[test]
fn scale_search_beats_rtn_on_every_format() {
    beats_rtn(&searched(GptqConfig::default()));
    beats_rtn(&searched(GptqConfig {
        act_order: true,
        ..GptqConfig::default()
    }));
    beats_rtn(&searched(GptqConfig {
        static_groups: true,
        ..GptqConfig::default()
    }));
}

/// With lazy groups (the default) the MSE scale search (the reference's
/// `mse=True`) is not worse than the min/max group parameters on average.
///
/// (With static groups, `act_order` or `static_groups`, it is not checked:
/// there the parameters fit the original weights, which GPTQ's updates then
/// move, and on these layers the search comes out 0-5% worse on some
/// 4-bit formats.)
#[test]
fn scale_search_is_no_worse_than_min_max() {
    let layers: Vec<Layer> = (10..18).map(layer).collect();
    for base in [
        GptqConfig::default(),
        GptqConfig {
            block_size: 32,
            ..GptqConfig::default()
        },
    ] {
        for name in FORMATS {
            let f: Format = name.parse().unwrap();
            let (mut plain, mut search) = (0.0, 0.0);
            for l in &layers {
                plain += output_error(l, &run(l, f, &base).dequantized);
                search += output_error(l, &run(l, f, &searched(base.clone())).dequantized);
            }
            assert!(
                search <= 1.02 * plain,
                "{name} {base:?}: search {search} min/max {plain}"
            );
        }
    }
}

/// Student-t (5 degrees of freedom) weights, scale 0.02.
fn student_t(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut normal = || {
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    (0..n)
        .map(|_| {
            let z = normal();
            let chi2: f64 = (0..5).map(|_| normal().powi(2)).sum();
            (0.02 * z / (chi2 / 5.0).sqrt()) as f32
        })
        .collect()
}

/// Weight MSE of the scale search against min/max on Student-t weights,
/// GPTQ's output error with it (and with the weighted search against the
/// unweighted one), and timings, on `[1536, 576]` and
/// `[576, 1536]` layers (SmolLM-135M's MLP shapes):
/// `cargo test --release --workspace --test gptq -- --ignored --nocapture`.
#[test]
#[ignore = "a report, not a check"]
fn scale_search_report() {
    let search = ScaleSearch::default();
    let secs = |t: Instant| t.elapsed().as_secs_f64();
    eprintln!(
        "Student-t(5) weights; ratios search / min-max: weight MSE, GPTQ output error \
         (lazy groups, act_order), then weighted / unweighted search: GPTQ output error \
         (lazy, act_order); times in s with {} threads, and ns per weight of \
         params_search and params_search_weighted on one thread",
        rayon::current_num_threads()
    );
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let mut rng = StdRng::seed_from_u64(7);
        let w = student_t(&mut rng, rows * cols);
        // Correlated neighbouring inputs and a few outlier channels.
        let tokens = 2048;
        let z: Vec<f32> = (0..tokens * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let c = i % cols;
                let mut v = z[i];
                if c >= 2 {
                    v += 0.6 * z[i - 1] + 0.3 * z[i - 2];
                }
                if c % 37 == 5 { v * 8.0 } else { v }
            })
            .collect();
        let mut h = Hessian::new(cols);
        h.add(&x, tokens).unwrap();
        let mse = |q: &[f32]| -> f64 {
            w.iter()
                .zip(q)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
        };
        let out = |q: &[f32]| {
            let d: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
            h.output_error(&d, rows).unwrap()
        };
        eprintln!("[{rows}, {cols}]");
        for name in FORMATS {
            let f: Format = name.parse().unwrap();
            let Ok(grid) = Grid::new(f, cols) else {
                continue;
            };
            let g = grid.group_size();
            let deq = |(codes, params): (Vec<i8>, Vec<distill_quant::GroupParams>)| -> Vec<f32> {
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| grid.dequantize(q, &params[i / g]))
                    .collect()
            };
            let t = Instant::now();
            let rtn = deq(grid.quantize_rtn(&w, rows).unwrap());
            let t_rtn = secs(t);
            let t = Instant::now();
            let srch = deq(grid.quantize_search(&w, rows, &search).unwrap());
            let t_srch = secs(t);
            // One thread, best of 3: the per-group search itself.
            let saliency: Vec<f32> = (0..w.len()).map(|_| rng.random_range(0.1..10.0)).collect();
            let time = |weighted: bool| {
                (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        for (grp, c) in w.chunks(g).zip(saliency.chunks(g)) {
                            std::hint::black_box(if weighted {
                                grid.params_search_weighted(grp, &search, c)
                            } else {
                                grid.params_search(grp, &search)
                            });
                        }
                        secs(t) * 1e9 / w.len() as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let (ns, ns_w) = (time(false), time(true));
            let gptq = |config: GptqConfig| {
                let t = Instant::now();
                let r = gptq_quantize(&w, rows, cols, &h, f, &config).unwrap();
                (out(&r.dequantized), secs(t))
            };
            let (lazy, t_gptq) = gptq(GptqConfig::default());
            let (lazy_s, t_gptq_s) = gptq(searched(GptqConfig::default()));
            let act = GptqConfig {
                act_order: true,
                ..GptqConfig::default()
            };
            let (act_o, _) = gptq(act.clone());
            let (act_s, _) = gptq(searched(act.clone()));
            let (lazy_w, _) = gptq(weighted_search(GptqConfig::default()));
            let (act_w, _) = gptq(weighted_search(act));
            eprintln!(
                "{name:>15}: MSE {:.4}  GPTQ {:.4} act_order {:.4}  weighted {:.4} {:.4}  \
                 rtn {t_rtn:.3} search {t_srch:.3} gptq {t_gptq:.3} gptq+search {t_gptq_s:.3}  \
                 {ns:.0} / {ns_w:.0} ns/weight",
                mse(&srch) / mse(&rtn),
                lazy_s / lazy,
                act_s / act_o,
                lazy_w / lazy_s,
                act_w / act_s,
            );
        }
    }
}

/// `H = 2XᵀX/N ∝ I`: the statistics of `X = 3I` over `COLS` rows.
fn identity_hessian() -> Hessian {
    let mut eye = vec![0f32; COLS * COLS];
    eye.iter_mut().step_by(COLS + 1).for_each(|v| *v = 3.0);
    let mut h = Hessian::new(COLS);
    h.add(&eye, COLS).unwrap();
    h
}

/// With `H ∝ I` nothing is propagated: GPTQ is RTN on the grid (for the
/// integer formats, `PackedMatrix::quantize_rtn` itself).
#[test]
fn identity_hessian_gives_rtn() {
    let l = layer(1);
    let h = identity_hessian();
    for name in FORMATS {
        let f: Format = name.parse().unwrap();
        for act_order in [false, true] {
            let config = GptqConfig {
                act_order,
                ..GptqConfig::default()
            };
            let r = gptq_quantize(&l.w, ROWS, COLS, &h, f, &config).unwrap();
            let grid = Grid::new(f, COLS).unwrap();
            let (codes, params) = grid.quantize_rtn(&l.w, ROWS).unwrap();
            assert_eq!(
                r.packed,
                grid.build(ROWS, &codes, &params).unwrap(),
                "{name}"
            );
            if let Format::Int(_) = f {
                let rtn = PackedMatrix::quantize_rtn(&l.w, ROWS, COLS, f).unwrap();
                assert_eq!(r.packed, rtn, "{name}");
            }
        }
    }
}

#[test]
fn dead_inputs_zero_their_weights() {
    let mut l = layer(2);
    for t in 0..TOKENS {
        l.x[t * COLS + 3] = 0.0;
        l.x[t * COLS + 100] = 0.0;
    }
    let mut h = Hessian::new(COLS);
    h.add(&l.x, TOKENS).unwrap();
    // The formats whose grid holds 0 store the zeroed weights exactly; the
    // affine ones (int4-asym, `Q4_1`: `min + q·scale`) store the grid value
    // nearest 0, within half a step of it (the step is at most 1/15 of the
    // group's range, itself within the row's).
    for name in [
        "int8",
        "int4-sym-g32",
        "int4-asym-g64",
        "q8_0",
        "q4_0",
        "q4_1",
    ] {
        let f: Format = name.parse().unwrap();
        let r = gptq_quantize(&l.w, ROWS, COLS, &h, f, &GptqConfig::default()).unwrap();
        assert_eq!(r.stats.dead_columns, 2);
        for row in r.dequantized.chunks(COLS) {
            if matches!(name, "int4-asym-g64" | "q4_1") {
                let (lo, hi) = row
                    .iter()
                    .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
                let half_step = (hi - lo) / 30.0 * (1.0 + 1e-3);
                assert!(
                    row[3].abs() <= half_step && row[100].abs() <= half_step,
                    "{name}"
                );
            } else {
                assert_eq!((row[3], row[100]), (0.0, 0.0), "{name}");
            }
        }
    }
}

#[test]
fn failed_cholesky_is_retried_with_more_damping() {
    // H = 2 · 11ᵀ is singular: its Cholesky fails without dampening.
    let cols = 32;
    let mut h = Hessian::new(cols);
    h.add(&vec![1.0; 4 * cols], 4).unwrap();
    let w: Vec<f32> = (0..2 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let f: Format = "q8_0".parse().unwrap();
    let config = GptqConfig {
        damp: 0.0,
        ..GptqConfig::default()
    };
    let r = gptq_quantize(&w, 2, cols, &h, f, &config).unwrap();
    assert!(
        r.stats.damp_retries >= 1 && r.stats.damp > 0.0,
        "{:?}",
        r.stats
    );
    assert!(!r.stats.hessian_fallback);
    assert!(r.dequantized.iter().all(|v| v.is_finite()));

    // A NaN input can never be factorized: no error is propagated (RTN).
    let mut h = Hessian::new(cols);
    let mut x = vec![0.5; 4 * cols];
    x[5] = f32::NAN;
    h.add(&x, 4).unwrap();
    let r = gptq_quantize(&w, 2, cols, &h, f, &GptqConfig::default()).unwrap();
    assert!(r.stats.hessian_fallback);
    let grid = Grid::new(f, cols).unwrap();
    let (codes, params) = grid.quantize_rtn(&w, 2).unwrap();
    assert_eq!(r.packed, grid.build(2, &codes, &params).unwrap());
}

#[test]
fn bad_shapes_are_errors() {
    let l = layer(3);
    let f: Format = "int4-sym-g64".parse().unwrap();
    let c = GptqConfig::default();
    assert!(gptq_quantize(&l.w[1..], ROWS, COLS, &l.h, f, &c).is_err());
    assert!(gptq_quantize(&l.w, ROWS - 1, COLS, &l.h, f, &c).is_err());
    assert!(gptq_quantize(&l.w, ROWS * 2, COLS / 2, &l.h, f, &c).is_err());
    assert!(gptq_quantize(&l.w, ROWS, COLS, &Hessian::new(COLS), f, &c).is_err());
    let g128: Format = "int4-sym-g128".parse().unwrap();
    let w = vec![0.1; 2 * 576];
    let mut h = Hessian::new(576);
    h.add(&vec![1.0; 576], 1).unwrap();
    assert!(gptq_quantize(&w, 2, 576, &h, g128, &c).is_err());
    assert!(gptq_quantize(&w, 2, 576, &h, f, &c).is_ok());
    assert!(gptq_quantize(&[], 0, 576, &h, f, &c).is_ok());
}

/// The scale search weighted by GPTQ's saliency `1 / U_cc²` lowers the
/// output error against the unweighted search, with lazy groups, `act_order`
/// and static groups, on every format (here by 3-55%: these layers' outlier
/// input channels dominate the output error, and the weighted search fits
/// their weights' grid).
#[test]
fn weighted_search_beats_the_unweighted_search() {
    let layers: Vec<Layer> = (10..18).map(layer).collect();
    for base in [
        GptqConfig::default(),
        GptqConfig {
            act_order: true,
            ..GptqConfig::default()
        },
        GptqConfig {
            static_groups: true,
            ..GptqConfig::default()
        },
    ] {
        for name in FORMATS {
            let f: Format = name.parse().unwrap();
            let (mut plain, mut weighted) = (0.0, 0.0);
            for l in &layers {
                plain += output_error(l, &run(l, f, &searched(base.clone())).dequantized);
                weighted += output_error(l, &run(l, f, &weighted_search(base.clone())).dequantized);
            }
            assert!(
                weighted < 0.99 * plain,
                "{name} {base:?}: weighted {weighted} unweighted {plain}"
            );
        }
    }
}

/// Without `scale_search` the flag does nothing; with equal saliencies
/// (`H ∝ I`) the weighted search is the unweighted one.
#[test]
fn weighted_search_reduces_to_the_plain_rules() {
    let l = layer(4);
    let h = identity_hessian();
    for name in FORMATS {
        let f: Format = name.parse().unwrap();
        for act_order in [false, true] {
            let base = GptqConfig {
                act_order,
                ..GptqConfig::default()
            };
            let only_flag = GptqConfig {
                weighted_search: true,
                ..base.clone()
            };
            let q = |h: &Hessian, c: &GptqConfig| gptq_quantize(&l.w, ROWS, COLS, h, f, c).unwrap();
            assert_eq!(q(&l.h, &only_flag), q(&l.h, &base), "{name}");
            let (a, b) = (
                q(&h, &weighted_search(base.clone())),
                q(&h, &searched(base)),
            );
            assert_eq!(a.packed, b.packed, "{name}");
        }
    }
}

#[test]
fn weighted_search_beats_rtn_on_every_format() {
    beats_rtn(&weighted_search(GptqConfig::default()));
    beats_rtn(&weighted_search(GptqConfig {
        act_order: true,
        ..GptqConfig::default()
    }));
}
