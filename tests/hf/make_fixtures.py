#!/usr/bin/env python3
"""Build tiny random HF models plus reference outputs for distill's parity tests.

Usage: make_fixtures.py OUT_DIR

For each case (llama_tied_gqa, llama_untied_bias, qwen2) writes OUT_DIR/<name>/ with
  config.json, generation_config.json, model.safetensors (float32),
  tokenizer.json + tokenizer_config.json (small byte-level BPE, chat_template),
  reference.safetensors:
    input_ids, attention_mask  int64 [3, 72]   right padded (lengths 72, 65, 40; pad id 0)
    logits                     f32   [3, 72, V] full forward, position_ids = arange(S)
    decode_prompt_ids/_mask    int64 [3, 20]   left padded (lengths 20, 13, 7; pad id 0)
    decode_prefill_logits      f32   [3, 20, V] position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    decode_new_ids             int64 [3, 12]   fed one token at a time through the KV cache
    decode_logits              f32   [3, 12, V] logits after feeding decode_new_ids[:, t]
All parameters are re-drawn from N(0, 0.15) under a fixed seed, except RMSNorm weights,
drawn from N(1, 0.15): with mean-0 norm weights every activation shrinks by ~0.15 per norm,
so attention and logits come out near uniform (a wrong RoPE theta then moves logits by only
~2e-3); with mean 1 logits have std ~1.2 and the same error moves them by ~2. CPU only, no network,
deterministic. Needs torch, transformers (5.x: config uses `rope_parameters`), tokenizers,
safetensors.
"""
import inspect
import json
import os
import sys
import time

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

torch.set_num_threads(1)

TEXT = [
    "The quick brown fox jumps over the lazy dog. A small model can still learn a great deal "
    "about the structure of language when it is trained on enough text, and the people who "
    "build such models often start with tiny examples like this one to make sure that every "
    "piece of the machinery works before they spend real compute on it.",
    "In the morning the river was quiet and grey; by noon the sun had burned the fog away and "
    "the boats were out on the water. Children ran along the bank, shouting to each other, "
    "while their parents talked about the weather, the harvest, and the price of bread in town.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
BOS_ID, EOS_ID, PAD_ID = 0, 2, 0
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def rope(theta):
    return {"rope_type": "default", "rope_theta": theta}


CASES = {
    "llama_tied_gqa": (LlamaForCausalLM, LlamaConfig, dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        rope_parameters=rope(5000.0), rms_norm_eps=1e-5)),
    "llama_untied_bias": (LlamaForCausalLM, LlamaConfig, dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, intermediate_size=96, tie_word_embeddings=False, attention_bias=True,
        mlp_bias=True, rope_parameters=rope(20000.0), rms_norm_eps=1e-6)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, tie_word_embeddings=False, rope_parameters=rope(1e6),
        rms_norm_eps=1e-6)),
}
STRING_MERGES = {"llama_untied_bias"}  # these get legacy "a b" merges; the rest [["a","b"]]


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer=trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[BOS_ID], eos_token=SPECIALS[EOS_ID],
        pad_token=SPECIALS[PAD_ID], chat_template=CHAT_TEMPLATE)


def set_merges_form(path, as_strings):
    """Rewrite tokenizer.json model.merges into "a b" strings or ["a","b"] pairs; return form."""
    with open(path) as f:
        tj = json.load(f)
    pairs = [m.split(" ") if isinstance(m, str) else m for m in tj["model"]["merges"]]
    assert all(len(p) == 2 and " " not in p[0] + p[1] for p in pairs)
    tj["model"]["merges"] = [" ".join(p) for p in pairs] if as_strings else pairs
    with open(path, "w") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
    return "strings" if as_strings else "pairs"


def step(model, ids, mask, pos, cache=None):
    """One forward with use_cache=True; returns (logits, cache). transformers 5.2x renamed
    `past_key_values` to `cache` (old name deprecated), so use whichever forward accepts."""
    new_api = "cache" in inspect.signature(model.forward).parameters
    kw = {"cache" if new_api else "past_key_values": cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    return out.logits, (out.cache if new_api else out.past_key_values)


def reference(model, vocab, gen):
    B, S = 3, 72
    ref = {}
    # Full forward, right padding.
    lens = torch.tensor([72, 65, 40])
    mask = (torch.arange(S)[None, :] < lens[:, None]).long()
    ids = torch.randint(3, vocab, (B, S), generator=gen) * mask + PAD_ID * (1 - mask)
    pos = torch.arange(S)[None, :].expand(B, S)
    ref["input_ids"], ref["attention_mask"] = ids, mask
    ref["logits"] = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits

    # KV-cache decoding, left padding.
    P, T = 20, 12
    plens = torch.tensor([20, 13, 7])
    pmask = (torch.arange(P)[None, :] >= (P - plens)[:, None]).long()
    pids = torch.randint(3, vocab, (B, P), generator=gen) * pmask + PAD_ID * (1 - pmask)
    new = torch.randint(3, vocab, (B, T), generator=gen)
    ppos = (pmask.cumsum(-1) - 1).clamp(min=0)
    ref["decode_prompt_ids"], ref["decode_prompt_mask"], ref["decode_new_ids"] = pids, pmask, new
    ref["decode_prefill_logits"], cache = step(model, pids, pmask, ppos)
    m, last = pmask, ppos[:, -1:]
    steps = []
    for t in range(T):
        m = torch.cat([m, torch.ones(B, 1, dtype=m.dtype)], dim=1)
        last = last + 1
        logits, cache = step(model, new[:, t:t + 1], m, last, cache)
        steps.append(logits[:, -1])
    ref["decode_logits"] = torch.stack(steps, dim=1)

    # Self-consistency: the whole sequence at once must give the same decode-step logits.
    full_ids = torch.cat([pids, new], dim=1)
    full_pos = (m.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=full_ids, attention_mask=m, position_ids=full_pos).logits
    diff = (full[:, P:] - ref["decode_logits"]).abs().max().item()
    assert diff < 1e-4, f"cached vs full decode mismatch: {diff}"
    ref = {k: v.contiguous().float() if v.is_floating_point() else v.contiguous().long()
           for k, v in ref.items()}
    assert all(torch.isfinite(v).all() for v in ref.values() if v.is_floating_point())
    return ref, diff


def main():
    out_dir = sys.argv[1]
    t0 = time.time()
    tokenizer = train_tokenizer()
    vocab = len(tokenizer)
    for i, (name, (model_cls, cfg_cls, kw)) in enumerate(CASES.items()):
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        cfg = cfg_cls(vocab_size=vocab, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                      pad_token_id=PAD_ID, max_position_embeddings=256, **kw)
        torch.manual_seed(1234 + i)
        model = model_cls(cfg).float().eval()
        with torch.no_grad():
            for n, p in model.named_parameters():  # tied lm_head shares embed_tokens
                torch.nn.init.normal_(p, mean=1.0 if "norm" in n else 0.0, std=0.15)
        model.generation_config.bos_token_id = BOS_ID
        model.generation_config.eos_token_id = EOS_ID
        model.generation_config.pad_token_id = PAD_ID
        model.save_pretrained(d, safe_serialization=True)
        model.generation_config.save_pretrained(d)
        # save_jinja_files=False: keep chat_template inside tokenizer_config.json (5.x would
        # otherwise write it to chat_template.jinja).
        tokenizer.save_pretrained(d, save_jinja_files=False)
        form = set_merges_form(os.path.join(d, "tokenizer.json"), name in STRING_MERGES)
        with torch.no_grad():
            ref, diff = reference(model, vocab, torch.Generator().manual_seed(99 + i))
        save_file(ref, os.path.join(d, "reference.safetensors"))
        shapes = " ".join(f"{k}={list(v.shape)}" for k, v in ref.items())
        print(f"{name}: vocab={vocab} merges={form} cache_vs_full={diff:.2e} {shapes}")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
