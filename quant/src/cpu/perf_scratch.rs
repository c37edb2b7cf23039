// TEMPORARY perf probes (removed before hand-off).
use super::*;
use std::time::Instant;

fn best<F: FnMut()>(n: usize, mut f: F) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..n {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

#[test]
#[ignore]
fn perf_dequant_and_panels() {
    let (rows, cols, tokens) = (4096usize, 4096usize, 512usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 5000.0)
        .collect();
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| ((i * 31 % 997) as f32 - 498.0) / 500.0)
        .collect();
    let mut y = vec![0f32; tokens * rows];
    for name in ["int8", "int4-g64", "q8_0", "q4_0", "q4_1"] {
        let f = crate::Format::from_cli(name, false).unwrap();
        let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
        let view = View::of(&m).unwrap();
        let mut out = vec![0f32; 256 * cols];
        for isa in Isa::available() {
            let t = best(5, || {
                for p in 0..rows / 256 {
                    packed_gemm_dq(isa, view, cols, p * 256, &mut out);
                }
            });
            println!(
                "dequant {name} {isa:?}: {:.2} ms (1 thread, 16M values)",
                t * 1e3
            );
        }
    }
    // gemm single thread, full vs panels
    let t = best(2, || unsafe {
        dense::gemm_xwt(
            tokens,
            rows / 4,
            cols,
            y.as_mut_ptr(),
            rows,
            &x,
            &w[..rows / 4 * cols],
            gemm::Parallelism::None,
        )
    });
    println!("gemm 1 thread, n = 1024 in one call: {:.1} ms", t * 1e3);
    for p in [32usize, 64, 128, 256, 512, 1024] {
        let t = best(2, || {
            for i in 0..(rows / 4) / p {
                unsafe {
                    dense::gemm_xwt(
                        tokens,
                        p,
                        cols,
                        y.as_mut_ptr().add(i * p),
                        rows,
                        &x,
                        &w[i * p * cols..(i + 1) * p * cols],
                        gemm::Parallelism::None,
                    )
                }
            }
        });
        println!(
            "gemm 1 thread, n = 1024 in panels of {p}: {:.1} ms",
            t * 1e3
        );
    }
}

fn packed_gemm_dq(isa: Isa, view: View<'_>, cols: usize, r0: usize, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => unsafe {
            portable::avx2::dequantize_rows(view, cols, r0, out)
        },
        _ => unsafe { portable::baseline::dequantize_rows(view, cols, r0, out) },
    }
}

#[test]
#[ignore]
fn perf_matvec_hot() {
    let (rows, cols) = (1024usize, 4096usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 5000.0)
        .collect();
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 31 % 997) as f32 - 498.0) / 500.0)
        .collect();
    let mut y = vec![0f32; rows];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        for isa in Isa::available() {
            let t = best(50, || {
                f32_matvec_with(isa, &w, rows, cols, &x, &mut y).unwrap()
            });
            println!(
                "f32 {isa:?}: {:.1} us  {:.1} GB/s (hot, 1 thread)",
                t * 1e6,
                (rows * cols * 4) as f64 / t / 1e9
            );
        }
        for (name, asym) in [
            ("int8", false),
            ("int4-g64", false),
            ("int4-g64", true),
            ("int4-g32", false),
            ("int4-g128", true),
            ("q8_0", false),
            ("q4_0", false),
            ("q4_1", false),
        ] {
            let f = crate::Format::from_cli(name, asym).unwrap();
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            for isa in Isa::available() {
                let t = best(50, || matvec_with(isa, &m, &x, &mut y).unwrap());
                println!(
                    "{f} {isa:?}: {:.1} us  {:.1} Gweights/s  {:.1} GB/s (hot, 1 thread)",
                    t * 1e6,
                    (rows * cols) as f64 / t / 1e9,
                    m.storage_bytes() as f64 / t / 1e9
                );
            }
        }
        let t = best(200, || {
            std::hint::black_box(XQuant::build(&x, Order::Pairs, 8));
        });
        println!("xquant build portable: {:.1} us", t * 1e6);
        let t = best(200, || {
            std::hint::black_box(quantize_x(Isa::best(), &x, Order::Pairs, 8));
        });
        println!("xquant build best: {:.1} us", t * 1e6);
    });
}

#[test]
#[ignore]
fn typical_error() {
    let (rows, cols) = (1536usize, 576usize);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| (((i * 7919 + 13) % 1000) as f32 - 500.0) / 5000.0)
        .collect();
    for seed in 0..3u64 {
        let x: Vec<f32> = (0..cols)
            .map(|i| {
                let h = ((i as u64 + 1) * 2654435761 * (seed + 3)) % 10007;
                (h as f32 / 10007.0 - 0.5) * 2.0
            })
            .collect();
        for name in ["int8", "int4-g64", "q8_0", "q4_0", "q4_1"] {
            let f = crate::Format::from_cli(name, false).unwrap();
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            let mut y = vec![0f32; rows];
            matvec(&m, &x, &mut y).unwrap();
            let yr = match &m {
                PackedMatrix::Int(q) => crate::reference::matvec(q, &x).unwrap(),
                PackedMatrix::Ggml(g) => crate::reference::ggml_matvec(g, &x).unwrap(),
            };
            let num: f64 = y
                .iter()
                .zip(&yr)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = yr.iter().map(|b| (*b as f64).powi(2)).sum();
            println!(
                "{name} seed {seed}: ||y - y_ref|| / ||y_ref|| = {:.2e}",
                (num / den).sqrt()
            );
        }
    }
}
