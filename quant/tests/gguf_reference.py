#!/usr/bin/env python3
"""Reference data for quant/tests/gguf_blocks.rs.

Usage: gguf_reference.py OUT_DIR

Writes random f32 weight matrices and what the Python `gguf` package
(`gguf.quants.quantize` / `gguf.quants.dequantize`) makes of them:

  OUT_DIR/manifest.txt         first line `gguf <version> numpy <version>`,
                               then one line per case: `<name> <rows> <cols>`
  OUT_DIR/<name>.f32           the input, rows * cols little-endian f32
  OUT_DIR/<name>.<TYPE>.q      gguf.quants.quantize(input, TYPE) bytes
  OUT_DIR/<name>.<TYPE>.deq    gguf.quants.dequantize(those bytes, TYPE), f32

for TYPE in F32, F16, Q8_0, Q4_0, Q4_1.
"""

import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

TYPES = [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1]
ROWS, COLS = 16, 256  # 8 blocks of 32 per row


def normal(rng, scale=0.02, shape=(ROWS, COLS)):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cases(seed):
    rng = np.random.default_rng(seed)
    out = {}

    out["normal"] = normal(rng)

    w = normal(rng)
    w[rng.choice(ROWS, 4, replace=False)] = 0.0  # whole zero rows
    for r in range(ROWS):  # and single zero blocks
        b = rng.integers(0, COLS // 32)
        w[r, b * 32:(b + 1) * 32] = 0.0
    out["zeros"] = w

    # Tiny magnitudes, one decade per row: f16 scales that are subnormal or
    # underflow to 0, down to f32 subnormals where 1 / d overflows.
    w = normal(rng, 1.0)
    exps = [-3, -5, -6, -8, -10, -15, -20, -25, -30, -35, -36, -37, -38, -39, -40, -44]
    for r, e in enumerate(exps):
        w[r] *= np.float32(10.0**e)
    out["tiny"] = w.astype(np.float32)

    # Large outliers, up to magnitudes where the f16 scale overflows to inf.
    w = normal(rng)
    idx = rng.choice(ROWS * COLS, ROWS * COLS // 100, replace=False)
    w.flat[idx] *= rng.uniform(50, 5000, idx.size).astype(np.float32)
    w[3, 7] = 900.0
    w[4, 40] = -2.0e4
    w[5, 100] = 6.0e5  # Q8_0 d = 4724; Q4_0 |d| = 75000 -> f16 inf
    w[6, 200] = -3.0e6
    w[7, 5] = 1.0e30
    out["outliers"] = w

    out["negative"] = -np.abs(normal(rng)) - np.float32(1e-3)
    out["positive"] = np.abs(normal(rng, 5.0)) + np.float32(2.0)

    # Every row at its own scale.
    w = normal(rng, 1.0)
    w *= (10.0 ** rng.uniform(-4, 4, (ROWS, 1))).astype(np.float32)
    out["mixed_scale"] = w.astype(np.float32)

    # Exact halves: Q8_0 with amax 127 (d = 1, id = 1) rounds ties.
    w = (rng.integers(-254, 255, (ROWS, COLS)) / 2).astype(np.float32)
    w[:, ::32] = 127.0
    out["halves_q8"] = w

    # Exact halves for Q4_0 (first element -8, so d = 1) and Q4_1.
    w = (rng.integers(-16, 16, (ROWS, COLS)) / 2).astype(np.float32)
    w[:, ::32] = -8.0
    out["halves_q4"] = w

    # Q4_1 ties: min 0, max 15 so d = 1 and (x - min) * id + 0.5 is exact.
    w = (rng.integers(0, 31, (ROWS, COLS)) / 2).astype(np.float32)
    w[:, 0::32] = 0.0
    w[:, 1::32] = 15.0
    out["halves_q41"] = w

    # Tied magnitudes of both signs: Q4_0 takes the first.
    w = normal(rng)
    for r in range(ROWS):
        for b in range(COLS // 32):
            i, j = rng.choice(32, 2, replace=False)
            a = np.float32(abs(rng.standard_normal()) + 1.0)
            w[r, b * 32 + i] = a
            w[r, b * 32 + j] = -a
    out["tied_absmax"] = w

    # Negative zeros next to positive zeros.
    w = normal(rng)
    w[rng.random((ROWS, COLS)) < 0.2] = -0.0
    w[0, :32] = -0.0
    w[1, :] = -0.0
    out["signed_zero"] = w

    # Non-finite inputs: NaN and infinities.
    w = normal(rng)
    w[0, 3] = np.nan
    w[1, 40] = np.inf
    w[2, 70] = -np.inf
    w[3, :32] = np.nan
    w[4, 100] = np.inf
    w[4, 101] = -np.inf
    w[5, 5] = 3.0e38
    w[5, 6] = -3.0e38
    out["nonfinite"] = w

    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # overflow / invalid value in the tiny cases
    lines = [f"gguf {version('gguf')} numpy {np.__version__}"]
    for seed in range(4):
        for name, w in cases(seed).items():
            name = f"{name}_s{seed}"
            w = np.ascontiguousarray(w, dtype="<f4")
            assert w.shape == (ROWS, COLS)
            (out_dir / f"{name}.f32").write_bytes(w.tobytes())
            for t in TYPES:
                q = gguf.quants.quantize(w, t)
                q = np.ascontiguousarray(q)
                (out_dir / f"{name}.{t.name}.q").write_bytes(q.tobytes())
                d = gguf.quants.dequantize(q, t).astype("<f4", copy=False)
                assert d.shape == (ROWS, COLS)
                (out_dir / f"{name}.{t.name}.deq").write_bytes(d.tobytes())
            lines.append(f"{name} {ROWS} {COLS}")
    (out_dir / "manifest.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
