#!/usr/bin/env python3
"""Logits of a GGUF model as HF transformers loads it (dequantized to float32).

Usage: compare_gguf_logits.py MODEL.gguf IDS.json OUT.safetensors [TEXTS.json]

IDS.json holds token ids: a list, or a list of equal-length lists (a batch). Each row runs as
one unpadded causal sequence. Writes OUT.safetensors with `input_ids` (int64 [B, S]) and
`logits` (float32 [B, S, V]). With TEXTS.json (a list of strings) it also prints, as JSON on
the last line of stdout, {"ids": [...]}: each text tokenized by the tokenizer transformers builds
from the GGUF metadata, without special tokens added. Needs torch, transformers (>= 4.45 with
GGUF support), gguf and accelerate; CPU only.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(max(1, os.cpu_count() or 1))


def main():
    path, ids_path, out = sys.argv[1:4]
    directory, name = os.path.split(os.path.abspath(path))
    with open(ids_path) as f:
        ids = json.load(f)
    if ids and isinstance(ids[0], int):
        ids = [ids]
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    input_ids = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}, out)
    if len(sys.argv) > 4:
        with open(sys.argv[4]) as f:
            texts = json.load(f)
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        print(json.dumps({"ids": [tok(t, add_special_tokens=False).input_ids for t in texts]}))


if __name__ == "__main__":
    main()
