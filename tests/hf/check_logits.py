#!/usr/bin/env python3
"""Check that HF transformers loads MODEL_DIR and reproduces reference logits.

Usage: check_logits.py MODEL_DIR REFERENCE_SAFETENSORS [--tol 1e-4]

Loads MODEL_DIR with AutoModelForCausalLM (float32, CPU) and AutoTokenizer (only to prove
the tokenizer files load), runs the forward on the reference's input_ids / attention_mask
with position_ids = arange(S), and compares with the reference `logits` where the mask is 1.
Prints `max_abs_diff=<value>`; exit status 1 if it exceeds --tol, else 0. No network access.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("reference")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    try:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32,
                                                     local_files_only=True)
    except TypeError:  # transformers < 4.56 only knows torch_dtype
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32,
                                                     local_files_only=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    print(f"tokenizer_vocab_size={len(tok)}")

    ref = load_file(args.reference)
    ids, mask = ref["input_ids"].long(), ref["attention_mask"].long()
    pos = torch.arange(ids.shape[1])[None, :].expand_as(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    expected = ref["logits"].float()
    if logits.shape != expected.shape:
        print(f"shape mismatch: got {list(logits.shape)}, expected {list(expected.shape)}")
        return 1
    diff = (logits - expected).abs()[mask.bool()].max().item()
    print(f"max_abs_diff={diff}")
    return 0 if diff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
