"""The llmlingua side of ``prompt_vs_llmlingua.py``: run by the llmlingua virtual environment's
python, never imported by the project's.

Reads one JSON object on stdin::

    {"model": folder, "threads": 1, "probe": text,
     "jobs": [{"id": ..., "mode": "llmlingua" | "longllmlingua", "docs": [...],
               "question": ..., "target_token": n}, ...]}

and writes one JSON object on stdout: ``probe``, the per-token loss (nats) its scorer gives
the probe text (so the caller can check that both sides score with the same model), and
``results``, for each job its ``id``, ``context`` (the compressed context: llmlingua's
compressed prompt without the question, ``concate_question=False``) and ``seconds`` (wall
time of ``compress_prompt``). Progress goes to stderr.

llmlingua's ``PromptCompressor`` builds a tiktoken GPT-3.5 tokenizer, whose vocabulary is
downloaded on first use. LLMLingua and LongLLMLingua use it only to report token counts
(``origin_tokens``, ``compressed_tokens``), which the caller counts itself, so it is replaced
by an empty count here and no network is needed.
"""

from __future__ import annotations

import json
import sys
import time
import types

#: LongLLMLingua as llmlingua's README configures it (question-aware coarse ranking with the
#: question after each document, documents sorted by importance, dynamic ratios, contrastive
#: token scores)
LONGLLMLINGUA = {
    "rank_method": "longllmlingua",
    "condition_in_question": "after_condition",
    "reorder_context": "sort",
    "dynamic_context_compression_ratio": 0.3,
    "condition_compare": True,
    "context_budget": "+100",
}
MODES = {"llmlingua": {}, "longllmlingua": LONGLLMLINGUA}


def offline_tiktoken() -> None:
    """Replace the GPT-3.5 tokenizer llmlingua loads with an empty counter (see above)."""
    import tiktoken

    tiktoken.encoding_for_model = lambda name: types.SimpleNamespace(encode=lambda text: [])


def compress(compressor, job: dict) -> dict:
    """One job: the compressed context and the seconds ``compress_prompt`` took."""
    if job["mode"] not in MODES:
        raise SystemExit(f"job {job['id']}: mode {job['mode']!r} is not one of {sorted(MODES)}")
    start = time.perf_counter()
    out = compressor.compress_prompt(
        job["docs"],
        question=job["question"],
        target_token=job["target_token"],
        concate_question=False,
        **MODES[job["mode"]],
    )
    seconds = time.perf_counter() - start
    return {"id": job["id"], "context": out["compressed_prompt"], "seconds": seconds}


def main() -> None:
    request = json.load(sys.stdin)
    import torch

    torch.set_num_threads(request["threads"])
    offline_tiktoken()
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=request["model"], device_map="cpu")
    probe = compressor.get_ppl(request["probe"], granularity="token").tolist()
    results = []
    for i, job in enumerate(request["jobs"]):
        results.append(compress(compressor, job))
        print(f"llmlingua {i + 1}/{len(request['jobs'])}: {job['id']} "
              f"{results[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
    json.dump({"probe": probe, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
