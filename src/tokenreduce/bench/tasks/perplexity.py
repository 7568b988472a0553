"""Perplexity of a prose continuation read after a reduced prompt (decoder language models).

Each sample is a stretch of prose cut into a prompt of exactly ``context`` tokens and the
``continuation`` tokens that follow it. The prompt is prefilled by the (patched) model, so a
KV-cache method compresses its cache and a prefill method prunes it; the continuation is
then fed in one forward over that cache (teacher forcing), and its tokens' negative
log-likelihood is averaged. The unreduced model runs the same two steps, so the difference
is what the reduction costs the model's prediction of what comes next. KV bytes are read
from the cache tensors right after prefill.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import lmtasks
from ..configs import BASELINE
from ..measure import Steps, check_ints, fraction, reduced_model
from . import Column, Metrics, Options, Task, register
from .longcontext import (
    DEFAULT_CONTEXTS,
    KV_COLUMNS,
    QUICK_CONTEXT,
    check_length,
    check_lm,
    config_budget,
    kv_plot,
)


def prose_chunks(
    sentences: list[str], tokenizer: Any, tokens: int, count: int, seed: int
) -> list[list[int]]:
    """``count`` token lists of exactly ``tokens`` tokens, each the start of consecutive
    sentences from a seeded random sentence, joined by spaces and tokenized as one text (as
    the model reads prose, not sentence by sentence)."""
    rng = random.Random(f"perplexity:{tokens}:{seed}")
    out = []
    for _ in range(count):
        start = rng.randrange(len(sentences))
        stop, ids = start, []
        while len(ids) < tokens:
            # add about 3 characters per missing token, then tokenize the whole text again
            chars = 0
            while chars < 3 * (tokens - len(ids)):
                chars += len(sentences[stop % len(sentences)]) + 1
                stop += 1
            text = " ".join(sentences[i % len(sentences)] for i in range(start, stop))
            ids = tokenizer(text, add_special_tokens=False).input_ids
        out.append(list(ids[:tokens]))
    return out


@register
class Perplexity(Task):
    """Continuation perplexity after prefilling a long prose prompt with each configuration.

    Args:
        chunks: context length -> token lists of ``context + continuation`` tokens each.
        continuation: tokens scored after the prompt (the rest of each chunk is the prompt).
        source, seed: what the prose is and the seed of the chunks; part of the data id.
        batch_size: chunks run at once (no padding: chunks of one context have equal length).
        threads: torch threads the numbers were measured with (recorded).
    """

    name = "perplexity"
    description = "continuation perplexity after a reduced long prompt (language models)"
    model_kind = "lm"
    method_kinds = ("kv_cache", "prefill")
    columns = (
        Column("ppl", "perplexity", ".3f", False),
        Column("ppl_ratio", "ppl ×base", ".3f", False),
        Column("nll_delta", "Δ NLL (nats)", "+.4f", False),
        Column("ppl_by_context", "perplexity per context", "s"),
        *KV_COLUMNS,
    )
    plots = (kv_plot("ppl_kept", "baseline perplexity / perplexity (%)"),)

    def __init__(
        self,
        tokenizer: Any,
        chunks: dict[int, list[list[int]]],
        *,
        continuation: int = 64,
        source: str = "jargon-file",
        seed: int = 0,
        batch_size: int = 1,
        threads: int = 1,
    ) -> None:
        check_ints(
            ("continuation", continuation, 1),
            ("batch_size", batch_size, 1),
            ("threads", threads, 1),
        )
        if not chunks or not all(chunks.values()):
            raise ValueError("no chunks: give at least one context length with prose")
        for ctx, rows in chunks.items():
            bad = [len(r) for r in rows if len(r) != ctx + continuation]
            if bad:
                raise ValueError(
                    f"chunks of context {ctx} must hold {ctx + continuation} tokens "
                    f"(context + continuation), got {bad[0]}"
                )
        self.tokenizer = tokenizer
        self.chunks = {c: chunks[c] for c in sorted(chunks)}
        self.continuation, self.batch_size, self.threads = continuation, batch_size, threads
        digest = hashlib.sha256()
        for ctx, rows in self.chunks.items():
            for r in rows:
                digest.update(f"{ctx}:{','.join(map(str, r))};".encode())
        counts = "/".join(map(str, sorted({len(v) for v in self.chunks.values()})))
        self._data_id = (
            f"{self.name}:{source}:seed={seed}:ctx={'/'.join(map(str, self.chunks))}"
            f":n={counts}:cont={continuation}#{digest.hexdigest()[:12]}"
        )

    @classmethod
    def from_options(cls, loaded, options: Options) -> Perplexity:
        """Contexts ``options.context`` (default 1024, 2048, 4096 tokens), ``options.limit``
        prose chunks per context (default 10), 64 continuation tokens, prose from
        ``options.data`` (text or .gz; default the Jargon File), batch ``options.batch_size``
        (default 1), seed 0; ``quick``: one 512-token context and 2 chunks."""
        q = options.quick
        contexts = tuple(options.context) or ((QUICK_CONTEXT,) if q else DEFAULT_CONTEXTS)
        limit = options.limit or (2 if q else 10)
        check_lm(loaded.model, loaded.tokenizer, cls.name)
        continuation = 64
        check_length(loaded.model, max(contexts) + continuation)
        sentences = lmtasks.jargon_sentences(options.data)
        seed = 0
        chunks = {
            c: prose_chunks(sentences, loaded.tokenizer, c + continuation, limit, seed)
            for c in contexts
        }
        return cls(
            loaded.tokenizer,
            chunks,
            continuation=continuation,
            source=Path(options.data).name if options.data else "jargon-file",
            seed=seed,
            batch_size=options.batch_size or 1,
            threads=options.threads,
        )

    def _batches(self) -> list[tuple[int, torch.Tensor]]:
        out = []
        for ctx, rows in self.chunks.items():
            for i in range(0, len(rows), self.batch_size):
                out.append((ctx, torch.tensor(rows[i : i + self.batch_size], dtype=torch.long)))
        return out

    def steps(self, config: str) -> int:
        return len(self._batches())

    def check_model(self, model: nn.Module) -> None:
        check_lm(model, self.tokenizer, self.name)
        check_length(model, max(self.chunks) + self.continuation)

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        from ...lm import cache_bytes, cache_kwargs, output_cache

        kind, ratio = config_budget(config)
        nll = {c: 0.0 for c in self.chunks}
        kv = {c: 0 for c in self.chunks}
        # no timing here: the model itself is patched, not a copy
        with reduced_model(model, config, copy_model=False), torch.inference_mode():
            for ctx, ids in self._batches():
                prompt, cont = ids[:, :ctx], ids[:, ctx:]
                out = model(prompt, use_cache=True, logits_to_keep=1)
                cache = output_cache(out)
                kv[ctx] += cache_bytes(cache)
                first = out.logits[:, -1:].float()
                rest = model(cont[:, :-1], **cache_kwargs(model, cache), use_cache=True)
                logits = torch.cat([first, rest.logits.float()], dim=1)
                nll[ctx] += float(
                    F.cross_entropy(logits.flatten(0, 1), cont.flatten(), reduction="sum")
                )
                step()
        tokens = {c: len(rows) * self.continuation for c, rows in self.chunks.items()}
        mean_nll = sum(nll.values()) / sum(tokens.values())
        ppl = math.exp(mean_nll)
        base = baseline or {}
        base_ppl = base.get("ppl", ppl)
        total_kv = sum(kv.values())
        base_kv = base.get("kv_bytes", total_kv)
        longest = max(self.chunks)
        by_context = {str(c): math.exp(nll[c] / tokens[c]) for c in self.chunks}
        return {
            "method_kind": kind,
            "ratio": ratio,
            "nll": mean_nll,
            "nll_delta": mean_nll - base.get("nll", mean_nll),
            "ppl": ppl,
            "ppl_ratio": ppl / base_ppl,
            "ppl_kept": 100.0 * base_ppl / ppl,
            "ppl_per_context": by_context,
            "ppl_by_context": " · ".join(f"{c}: {p:.2f}" for c, p in by_context.items()),
            "tokens_scored": sum(tokens.values()),
            "kv_bytes": total_kv,
            "kv_mb": kv[longest] / len(self.chunks[longest]) / 2**20,
            "kv_ratio": fraction(total_kv, base_kv),
        }

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The configuration at 50% compression whose perplexity rises least."""
        from ..configs import label

        half = [(c, m) for c, m in rows if c != BASELINE and m.get("ratio") == 0.5]
        if not half:
            return []
        c, m = min(half, key=lambda cm: cm[1]["ppl"])
        return [
            f"lowest perplexity at 50% compression: {label(c)}: {m['ppl']:.3f} "
            f"({m['ppl_ratio']:.3f}x the full model's, {m['nll_delta']:+.4f} nats per token), "
            f"KV bytes {m['kv_ratio']:.3f}x"
        ]


__all__ = ["Perplexity", "prose_chunks"]
