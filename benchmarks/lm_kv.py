"""KV-cache compression on SmolLM2-135M-Instruct (CPU): accuracy kept on long-context tasks,
KV bytes measured from the cache tensors, time to first token and decoding speed.

    python benchmarks/lm_kv.py --threads 2 --out benchmarks/results/lm_kv.json

Accuracy: for each task and context length, one left-padded batch of prompts (one per needle
depth and seed) is generated greedily with the full cache and with every method at every
compression ratio. KV bytes are read from the cache tensors after prefill. Timing (batch 1):
prefill (time to first token) and ``--decode`` greedy steps, median of ``--repeats`` runs,
against the full cache measured in the same run with the same threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import tokenreduce
import tokenreduce.assets
from tokenreduce.adapters.hf_decoder import cache_bytes
from tokenreduce.lmtasks import jargon_sentences, make_sample

KV_METHODS = [n for n in tokenreduce.methods.available()
              if tokenreduce.methods.get(n).kind == "kv_cache"]  # fmt: skip


def spec_of(method: str, ratio: float) -> str:
    """``"snapkv:compression_ratio=0.5"``, ``"fastv:prune_ratio=0.5"``: the method's budget."""
    return f"{method}:{tokenreduce.methods.get(method).budget_param}={ratio}"


def encode(tok, samples):
    texts = [
        tok.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=False)
        + s.answer_prefix
        for s in samples
    ]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def run_accuracy(model, tok, samples, spec, max_new):
    enc = encode(tok, samples)
    n = enc.input_ids.shape[1]
    ctx = tokenreduce.patch(model, spec) if spec else None
    try:
        out = model.generate(
            **enc,
            max_new_tokens=max_new,
            do_sample=False,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
        )
    finally:
        if ctx is not None:
            ctx.remove()
    texts = tok.batch_decode(out.sequences[:, n:], skip_special_tokens=True)
    correct = [s.is_correct(t) for s, t in zip(samples, texts, strict=True)]
    # Entries appended while decoding are the same for every config: take them out.
    cfg = model.config
    appended = out.sequences.shape[1] - n - 1
    per_entry = 2 * cfg.num_key_value_heads * cfg.head_dim * 4 * len(samples)
    kv = cache_bytes(out.past_key_values) - cfg.num_hidden_layers * per_entry * appended
    return sum(correct) / len(correct), kv, texts


def time_config(model, ids, spec, decode, repeats):
    ttft, tps = [], []
    for _ in range(repeats):
        handle = tokenreduce.patch(model, spec) if spec else None
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = model(ids, use_cache=True)
                t1 = time.perf_counter()
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                for _ in range(decode):
                    out = model(nxt, past_key_values=cache, use_cache=True)
                    nxt = out.logits[:, -1:].argmax(-1)
                t2 = time.perf_counter()
        finally:
            if handle is not None:
                handle.remove()
        ttft.append(t1 - t0)
        tps.append(decode / (t2 - t1))
    return statistics.median(ttft), statistics.median(tps), cache_bytes(cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="niah,multikey,vt")
    p.add_argument("--lengths", default="1024", help="haystack lengths in tokens")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--ratios", default="0.25,0.5,0.75")
    p.add_argument("--methods", default=",".join(KV_METHODS), help="KV-cache or prefill methods")
    p.add_argument("--timing-lengths", default="1024,2048")
    p.add_argument("--timing-methods", default="snapkv,streamingllm,h2o")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/lm_kv.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = tokenreduce.assets.load("smollm2")
    sentences = jargon_sentences()
    methods = [m for m in a.methods.split(",") if m]
    ratios = [float(r) for r in a.ratios.split(",") if r]
    results = {"accuracy": [], "timing": [], "args": vars(a)}
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out_path.write_text(json.dumps(results, indent=1))

    for task in [t for t in a.tasks.split(",") if t]:
        for length in [int(x) for x in a.lengths.split(",") if x]:
            samples = [make_sample(task, tok, length, float(d), s, sentences)
                       for d in a.depths.split(",") for s in range(a.seeds)]  # fmt: skip
            configs = [("full", 0.0, None)] + [
                (m, r, spec_of(m, r)) for m in methods for r in ratios
            ]
            for name, ratio, spec in configs:
                t0 = time.perf_counter()
                acc, kv, texts = run_accuracy(model, tok, samples, spec, 6)
                row = {"task": task, "length": length, "method": name, "ratio": ratio,
                       "accuracy": acc, "kv_bytes": kv, "n": len(samples),
                       "seconds": round(time.perf_counter() - t0, 1), "outputs": texts}  # fmt: skip
                results["accuracy"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "outputs"}), flush=True)
                save()

    gen = torch.Generator().manual_seed(0)
    for length in [int(x) for x in a.timing_lengths.split(",") if x]:
        ids = torch.randint(100, tok.vocab_size, (1, length), generator=gen)
        specs = [("full", None)] + [(m, spec_of(m, 0.5)) for m in a.timing_methods.split(",") if m]
        for name, spec in specs:
            ttft, tps, kv = time_config(model, ids, spec, a.decode, a.repeats)
            row = {"length": length, "method": name, "ratio": 0.0 if spec is None else 0.5,
                   "ttft_s": ttft, "decode_tok_s": tps, "kv_bytes_end": kv}  # fmt: skip
            results["timing"].append(row)
            print(json.dumps(row), flush=True)
            save()


if __name__ == "__main__":
    main()
