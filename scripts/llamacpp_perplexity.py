"""Perplexity of a GGUF model in llama.cpp (through llama-cpp-python) on given token ids.

  ids TOKENIZER_JSON DATA.jsonl WINDOW WINDOWS OUT.json
      Tokenizes the documents of DATA.jsonl ({"text"} lines) with TOKENIZER_JSON (no added
      special tokens), joins them with the tokenizer's EOS (`eos_token` of the
      tokenizer_config.json beside it, else <|endoftext|>), and writes WINDOWS evenly spaced,
      non-overlapping windows of WINDOW ids as one flat JSON list (what `distill eval --data
      ids.json --window WINDOW --windows WINDOWS` scores as the same windows). Needs `tokenizers`.

  ppl GGUF IDS.json WINDOW THREADS
      Scores each window of IDS.json from an empty context, log-softmax in float64 over
      llama.cpp's logits, on its WINDOW - 1 next-token predictions; prints one JSON line:
      perplexity, mean NLL, windows, tokens scored, seconds. Needs `llama_cpp` and numpy.
"""

import json
import math
import os
import sys
import time


def ids(tokenizer_json, data, window, windows, out):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    config = os.path.join(os.path.dirname(tokenizer_json), "tokenizer_config.json")
    eos_token = "<|endoftext|>"
    if os.path.exists(config):
        eos = json.load(open(config)).get("eos_token")
        eos_token = eos.get("content") if isinstance(eos, dict) else (eos or eos_token)
    eos = tok.token_to_id(eos_token)
    stream = []
    with open(data) as f:
        for line in f:
            if line.strip():
                stream.extend(tok.encode(json.loads(line)["text"], add_special_tokens=False).ids)
                if eos is not None:
                    stream.append(eos)
    total = len(stream) // window
    if total == 0:
        sys.exit(f"{data}: {len(stream)} tokens, fewer than one window of {window}")
    n = min(windows, total)
    picked = [i * total // n for i in range(n)]
    flat = [t for i in picked for t in stream[i * window:(i + 1) * window]]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(flat, f)
    os.replace(tmp, out)
    print(json.dumps({"tokens": len(stream), "windows": n, "window": window, "eos": eos}))


def without_extra_buffer_types():
    """Loads models without llama.cpp's extra CPU buffer types (the AMX and repacked layouts).

    Built with -march=native on a Sapphire Rapids VM, llama.cpp's AMX matrix product
    (`ggml_backend_amx_mul_mat`) crashed with a segmentation fault at the first evaluation of
    any model. Without the extra buffer types the CPU backend's own kernels run the same
    quantized products. `Llama` exposes no flag for it, so its default model parameters are
    wrapped.
    """
    import llama_cpp.llama_cpp as c

    default = c.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    c.llama_model_default_params = params


def ppl(gguf, ids_json, window, threads):
    import numpy as np
    from llama_cpp import Llama

    without_extra_buffer_types()
    flat = json.load(open(ids_json))
    llm = Llama(
        model_path=gguf,
        n_ctx=window,
        n_batch=window,
        n_ubatch=window,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    t0 = time.time()
    nll, scored = 0.0, 0
    for start in range(0, len(flat) - window + 1, window):
        w = flat[start:start + window]
        llm.reset()
        llm.eval(w)
        logits = np.asarray(llm.scores[: len(w)], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(w[1:])
        nll -= float((logits[np.arange(len(w) - 1), targets] - logz[:-1]).sum())
        scored += len(w) - 1
    mean = nll / scored
    print(json.dumps({
        "perplexity": math.exp(mean),
        "mean_nll": mean,
        "windows": len(flat) // window,
        "tokens_scored": scored,
        "seconds": time.time() - t0,
    }))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ids":
        ids(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif cmd == "ppl":
        ppl(args[0], args[1], int(args[2]), int(args[3]))
    else:
        sys.exit(__doc__)
