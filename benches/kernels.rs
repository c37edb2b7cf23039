//! Packed CPU kernels (`distill_quant::cpu`) against the dense `f32` baseline.
//!
//! Run with `cargo bench --workspace --bench kernels` (criterion options
//! after `--`, e.g. `-- matvec_4096`). Groups, all in one run:
//!
//! * `bandwidth`: a 2-thread sum over a 512 MiB `f32` buffer: this
//!   machine's memory read bandwidth.
//! * `matvec_4096`: `y = W·x` on a 4096×4096 layer: `f32`, int8, int4-g64
//!   sym/asym, `Q8_0`, `Q4_0`, `Q4_1`. Each iteration uses the next of
//!   several copies of the weights (at least 256 MiB in all, well past the
//!   last-level cache), as decoding a model streams every layer from memory.
//! * `matvec_4096_isa`: int4-g64 and `Q4_0` with each instruction set.
//! * `prefill_512`: `Y = X·Wᵀ`, 512 tokens, 4096×4096: `f32` `gemm` against
//!   each packed format (panel dequantization + `gemm`).
//! * `matvec_smollm2`: SmolLM2-135M's layer shapes (576→576, 576→1536,
//!   1536→576), cold as above; reported, not gated.
//!
//! Criterion prints each variant's time and throughput (bytes of packed
//! weights per second, in GiB/s; elements = tokens/s for prefill). At the
//! end a summary table gives, from the same samples (median of criterion's
//! measurement samples), the time, the effective GB/s (10⁹ bytes) of weight
//! bytes streamed, the share of the measured bandwidth and the speed-up
//! over `f32`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use distill_quant::cpu::{self, Isa};
use distill_quant::{Format, PackedMatrix};

/// Bytes each cold rotation set spans at least.
const COLD_BYTES: usize = 256 << 20;
/// The bandwidth buffer.
const BW_BYTES: usize = 512 << 20;

/// Per-iteration seconds of every `iter_custom` call, by (group, variant).
static SAMPLES: Mutex<BTreeMap<(String, String), Vec<f64>>> = Mutex::new(BTreeMap::new());
/// Weight bytes of each matvec variant, by (group, variant).
static BYTES: Mutex<BTreeMap<(String, String), usize>> = Mutex::new(BTreeMap::new());

fn record(group: &str, name: &str, total: Duration, iters: u64) {
    let mut s = SAMPLES.lock().unwrap();
    s.entry((group.to_owned(), name.to_owned()))
        .or_default()
        .push(total.as_secs_f64() / iters.max(1) as f64);
}

/// Median of the last `n` recorded samples (criterion's measurement phase
/// comes after its warm-up calls).
fn median(group: &str, name: &str, n: usize) -> Option<f64> {
    let s = SAMPLES.lock().unwrap();
    let v = s.get(&(group.to_owned(), name.to_owned()))?;
    let mut last: Vec<f64> = v[v.len().saturating_sub(n)..].to_vec();
    last.sort_by(f64::total_cmp);
    Some(last[last.len() / 2])
}

/// Deterministic pseudo-random values in `[-amp, amp)` (xorshift).
fn values(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// The sum of `v` with 16 independent partial sums.
fn sum_portable(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in v.chunks_exact(16) {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum()
}

/// The sum of `v` (a multiple of 64 values) with four AVX-512 accumulators.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(v: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    for c in v.chunks_exact(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: 16 values of the chunk.
            *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(c.as_ptr().add(16 * j)) });
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// The sum of `v`, with the widest loads this CPU has (so the bandwidth
/// the kernels are compared with is not understated).
fn sum(v: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is available.
        return unsafe { sum_avx512(v) };
    }
    sum_portable(v)
}

/// Memory read bandwidth: 2 threads summing halves of a 512 MiB buffer.
fn bandwidth(c: &mut Criterion) {
    let buf = vec![1.0f32; BW_BYTES / 4];
    let mut g = c.benchmark_group("bandwidth");
    g.throughput(Throughput::Bytes(BW_BYTES as u64));
    g.sample_size(20);
    g.bench_function("read_2_threads", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let (a, z) = buf.split_at(buf.len() / 2);
                let s = std::thread::scope(|s| {
                    let h = s.spawn(|| sum(a));
                    sum(z) + h.join().unwrap()
                });
                black_box(s);
            }
            let e = t.elapsed();
            record("bandwidth", "read_2_threads", e, iters);
            e
        })
    });
    g.finish();
}

/// A packed variant of a benchmark.
struct Variant {
    name: &'static str,
    format: Option<Format>,
}

fn variants() -> Vec<Variant> {
    let f = |s: &str, asym| Some(Format::from_cli(s, asym).unwrap());
    vec![
        Variant {
            name: "f32",
            format: None,
        },
        Variant {
            name: "int8",
            format: f("int8", false),
        },
        Variant {
            name: "int4_g64_sym",
            format: f("int4-g64", false),
        },
        Variant {
            name: "int4_g64_asym",
            format: f("int4-g64", true),
        },
        Variant {
            name: "q8_0",
            format: f("q8_0", false),
        },
        Variant {
            name: "q4_0",
            format: f("q4_0", false),
        },
        Variant {
            name: "q4_1",
            format: f("q4_1", false),
        },
    ]
}

/// A weight matrix in one format: `f32` or packed.
enum Weights {
    F32(Vec<f32>),
    Packed(PackedMatrix),
}

impl Weights {
    fn new(w: &[f32], rows: usize, cols: usize, format: Option<Format>) -> Weights {
        match format {
            None => Weights::F32(w.to_vec()),
            Some(f) => Weights::Packed(PackedMatrix::quantize_rtn(w, rows, cols, f).unwrap()),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Weights::F32(w) => 4 * w.len(),
            Weights::Packed(m) => m.storage_bytes(),
        }
    }

    fn matvec(&self, isa: Isa, rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
        match self {
            Weights::F32(w) => cpu::f32_matvec_with(isa, w, rows, cols, x, y).unwrap(),
            Weights::Packed(m) => cpu::matvec_with(isa, m, x, y).unwrap(),
        }
    }

    fn matmul(&self, rows: usize, cols: usize, x: &[f32], tokens: usize, y: &mut [f32]) {
        match self {
            Weights::F32(w) => cpu::f32_matmul(w, rows, cols, x, tokens, y).unwrap(),
            Weights::Packed(m) => cpu::matmul(m, x, tokens, y).unwrap(),
        }
    }

    /// Enough copies of `self` to span [`COLD_BYTES`].
    fn cold_set(self) -> Vec<Weights> {
        let n = COLD_BYTES.div_ceil(self.bytes()).max(1);
        let mut v: Vec<Weights> = (1..n)
            .map(|_| match &self {
                Weights::F32(w) => Weights::F32(w.clone()),
                Weights::Packed(m) => Weights::Packed(m.clone()),
            })
            .collect();
        v.push(self);
        v
    }
}

/// Benchmarks `y = W·x` for every variant on `[rows, cols]`, rotating over
/// a cold set of copies.
fn matvec_group(
    c: &mut Criterion,
    group: &str,
    shapes: &[(usize, usize)],
    variants: &[Variant],
    isas: &[Isa],
    time: Duration,
) {
    let mut g = c.benchmark_group(group);
    g.measurement_time(time)
        .warm_up_time(Duration::from_millis(500));
    g.sample_size(SMALL_SAMPLES);
    for &(rows, cols) in shapes {
        let w = values(rows * cols, 0.05, (rows * 31 + cols) as u64);
        let x = values(cols, 1.0, 7);
        let mut y = vec![0f32; rows];
        for v in variants {
            let set = Weights::new(&w, rows, cols, v.format).cold_set();
            g.throughput(Throughput::Bytes(set[0].bytes() as u64));
            for &isa in isas {
                let name = bench_name(v.name, rows, cols, shapes.len() > 1, isa, isas.len() > 1);
                let mut next = 0usize;
                BYTES
                    .lock()
                    .unwrap()
                    .insert((group.to_owned(), name.clone()), set[0].bytes());
                g.bench_function(&name, |b| {
                    b.iter_custom(|iters| {
                        let t = Instant::now();
                        for _ in 0..iters {
                            set[next].matvec(isa, rows, cols, black_box(&x), &mut y);
                            next = (next + 1) % set.len();
                        }
                        let e = t.elapsed();
                        record(group, &name, e, iters);
                        e
                    })
                });
                black_box(&y);
            }
        }
    }
    g.finish();
}

fn bench_name(v: &str, rows: usize, cols: usize, shape: bool, isa: Isa, with_isa: bool) -> String {
    let mut s = v.to_owned();
    if shape {
        s = format!("{cols}to{rows}_{s}");
    }
    if with_isa {
        s = format!("{s}_{}", format!("{isa:?}").to_ascii_lowercase());
    }
    s
}

const SMALL_SAMPLES: usize = 50;
const PREFILL_SAMPLES: usize = 10;
const PREFILL_TOKENS: usize = 512;
const BIG: usize = 4096;
const SMOLLM2: [(usize, usize); 3] = [(576, 576), (1536, 576), (576, 1536)];

fn prefill(c: &mut Criterion) {
    let (rows, cols, tokens) = (BIG, BIG, PREFILL_TOKENS);
    let w = values(rows * cols, 0.05, 11);
    let x = values(tokens * cols, 1.0, 13);
    let mut y = vec![0f32; tokens * rows];
    let mut g = c.benchmark_group("prefill_512");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(PREFILL_SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(tokens as u64));
    for v in variants() {
        let wt = Weights::new(&w, rows, cols, v.format);
        g.bench_function(v.name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    wt.matmul(rows, cols, black_box(&x), tokens, &mut y);
                }
                let e = t.elapsed();
                record("prefill_512", v.name, e, iters);
                e
            })
        });
    }
    g.finish();
}

fn summary() {
    let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
    let bw = median("bandwidth", "read_2_threads", 20).map(|s| gb(BW_BYTES, s));
    println!();
    println!("== summary (median of criterion's measurement samples) ==");
    match bw {
        Some(b) => println!("memory read bandwidth: {b:.1} GB/s (2 threads, 512 MiB f32 sum)"),
        None => println!("memory read bandwidth: not measured (filtered out)"),
    }
    println!("threads: {}, kernels: {:?}", threads(), Isa::best());

    let table = |group: &str, shapes: &[(usize, usize)]| {
        for &(rows, cols) in shapes {
            let f32_name = bench_name("f32", rows, cols, shapes.len() > 1, Isa::best(), false);
            let base = median(group, &f32_name, SMALL_SAMPLES);
            if base.is_none() && shapes.len() > 1 {
                continue;
            }
            println!();
            println!("{group}: {cols} -> {rows} (W {rows}x{cols}), cold weights");
            println!(
                "{:<16} {:>10} {:>11} {:>8} {:>9} {:>9}",
                "variant", "MiB", "time (us)", "GB/s", "% of bw", "vs f32"
            );
            for v in variants() {
                let name = bench_name(v.name, rows, cols, shapes.len() > 1, Isa::best(), false);
                let Some(t) = median(group, &name, SMALL_SAMPLES) else {
                    continue;
                };
                let bytes = BYTES.lock().unwrap()[&(group.to_owned(), name.clone())];
                let g = gb(bytes, t);
                let pct = bw.map_or("-".into(), |b| format!("{:.0} %", 100.0 * g / b));
                let sp = base.map_or("-".into(), |b| format!("{:.2}x", b / t));
                println!(
                    "{:<16} {:>10.2} {:>11.1} {:>8.1} {:>9} {:>9}",
                    v.name,
                    bytes as f64 / (1 << 20) as f64,
                    t * 1e6,
                    g,
                    pct,
                    sp
                );
            }
        }
    };
    table("matvec_4096", &[(BIG, BIG)]);

    let isa_rows: Vec<(String, f64)> = ["int4_g64_sym", "q4_0"]
        .iter()
        .flat_map(|v| {
            Isa::available().into_iter().filter_map(move |isa| {
                let name = bench_name(v, BIG, BIG, false, isa, true);
                median("matvec_4096_isa", &name, SMALL_SAMPLES).map(|t| (name, t))
            })
        })
        .collect();
    if !isa_rows.is_empty() {
        println!();
        println!("matvec_4096_isa: 4096 -> 4096 per instruction set");
        for (name, t) in isa_rows {
            println!("{name:<28} {:>10.1} us", t * 1e6);
        }
    }

    let base = median("prefill_512", "f32", PREFILL_SAMPLES);
    if base.is_some() || median("prefill_512", "int8", PREFILL_SAMPLES).is_some() {
        println!();
        println!("prefill_512: 512 tokens x (4096 -> 4096)");
        println!(
            "{:<16} {:>10} {:>10} {:>12} {:>14}",
            "variant", "time (ms)", "GFLOP/s", "tokens/s", "time / f32"
        );
        let flop = 2.0 * (PREFILL_TOKENS * BIG * BIG) as f64;
        for v in variants() {
            let Some(t) = median("prefill_512", v.name, PREFILL_SAMPLES) else {
                continue;
            };
            let ratio = base.map_or("-".into(), |b| format!("{:.2}", t / b));
            println!(
                "{:<16} {:>10.1} {:>10.1} {:>12.0} {:>14}",
                v.name,
                t * 1e3,
                flop / t / 1e9,
                PREFILL_TOKENS as f64 / t,
                ratio
            );
        }
    }
    table("matvec_smollm2", &SMOLLM2);
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bandwidth(&mut c);
    let all = variants();
    matvec_group(
        &mut c,
        "matvec_4096",
        &[(BIG, BIG)],
        &all,
        &[Isa::best()],
        Duration::from_secs(3),
    );
    let isa_variants: Vec<Variant> = all
        .iter()
        .filter(|v| v.name == "int4_g64_sym" || v.name == "q4_0")
        .map(|v| Variant {
            name: v.name,
            format: v.format,
        })
        .collect();
    matvec_group(
        &mut c,
        "matvec_4096_isa",
        &[(BIG, BIG)],
        &isa_variants,
        &Isa::available(),
        Duration::from_secs(2),
    );
    prefill(&mut c);
    matvec_group(
        &mut c,
        "matvec_smollm2",
        &SMOLLM2,
        &all,
        &[Isa::best()],
        Duration::from_secs(1),
    );
    c.final_summary();
    summary();
}
