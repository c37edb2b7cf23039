#!/usr/bin/env python3
"""Read a GGUF file with the reference `gguf` package (gguf-py, llama.cpp's own reader).

Usage: read_gguf.py MODEL.gguf OUT.safetensors

Writes every tensor dequantized to float32 by `gguf.quants.dequantize`, under its GGUF name and
in numpy order (GGUF dims reversed: an HF [out, in] matrix is [out, in] here too), and prints
JSON to stdout: {"version", "metadata": {key: value or {"len", "head"} for arrays},
"tensors": {name: {"type", "dims", "offset", "n_bytes"}}}.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file


def main():
    path, out = sys.argv[1], sys.argv[2]
    reader = GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        value = field.contents()
        if isinstance(value, list):
            value = {"len": len(value), "head": value[:8]}
        metadata[key] = value
    tensors, info = {}, {}
    for t in reader.tensors:
        dims = [int(d) for d in t.shape]
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        tensors[t.name] = np.ascontiguousarray(values.reshape(tuple(reversed(dims))))
        info[t.name] = {"type": t.tensor_type.name, "dims": dims,
                        "offset": int(t.data_offset), "n_bytes": int(t.n_bytes)}
    save_file(tensors, out)
    print(json.dumps({"version": int(reader.fields["GGUF.version"].contents()),
                      "metadata": metadata, "tensors": info}))


if __name__ == "__main__":
    main()
