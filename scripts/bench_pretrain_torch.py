"""Pretraining throughput of PyTorch, on the CPU or a CUDA GPU: the reference for `benches/pretrain.rs`.

The same model and step as the criterion bench: `transformers.LlamaForCausalLM` in f32 with
4 layers, hidden 256, MLP 768, 4 attention heads over 2 KV heads of 64, tied embeddings, RoPE
base 10000, RMSNorm eps 1e-5; 8 windows of 256 tokens a step (2,048 tokens); forward,
next-token cross-entropy, backward, global-norm gradient clipping at 1.0, and
`torch.optim.AdamW` (lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on all but the
norms). Seeded random weights and token ids. Warm-up steps, then timed steps; prints one JSON
line per vocabulary with tokens/s from the median step time.

    usage: bench_pretrain_torch.py [--vocab 4096 49152] [--threads N] [--warmup 3] [--steps 10]
                                   [--device cpu|cuda]
"""

import argparse
import json
import os
import statistics
import sys
import time

SEQ = 256
BATCH = 8
WINDOWS = 32


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[4096, 49152])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    args = p.parse_args()
    for name in ("threads", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0 or any(v < 2 for v in args.vocab):
        p.error("--warmup must be >= 0 and each --vocab >= 2")
    return args


def model_and_optimizer(vocab, seed, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=SEQ,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).train().to(device)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith(("norm.weight", ".bias")) else decay).append(param)
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    return model, optim


def bench(vocab, args):
    import torch
    import torch.nn.functional as F

    model, optim = model_and_optimizer(vocab, args.seed, args.device)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    windows = torch.randint(0, vocab, (WINDOWS, SEQ + 1), generator=gen).to(args.device)

    def step(i):
        rows = [(i * BATCH + r) % WINDOWS for r in range(BATCH)]
        batch = windows[rows]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + i)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "vocab_size": vocab,
        "tokens_per_step": BATCH * SEQ,
        "tokens_per_s": BATCH * SEQ / median,
        "step_ms_median": median * 1e3,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in params),
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__,
    }


def main():
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for vocab in args.vocab:
        print(json.dumps(bench(vocab, args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
