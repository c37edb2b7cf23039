#!/usr/bin/env python3
"""Quantize a raw f32 matrix with the `gguf` package, the reference for our block formats.

Usage: quantize_rows.py IN.f32 ROWS COLS TYPE OUT

Reads ROWS x COLS little-endian f32 from IN.f32 and writes gguf.quants.quantize(x, TYPE)
(TYPE: Q8_0, Q4_0 or Q4_1) to OUT.
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

src, rows, cols, ty, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
x = np.fromfile(src, dtype="<f4").reshape(rows, cols)
quantize(x, GGMLQuantizationType[ty]).tofile(out)
