"""Compressing the text or the cache: prompt compression next to KV-cache methods, ``prompt``.

The samples are the four long-context tasks of :mod:`tokenreduce.lmtasks` together (needle,
multi-key, variable tracking, question answering over documents), the same number of each
at every context length. A configuration is a prompt-compression method at a rate
(``llmlingua:rate=0.25``: a quarter of the context's tokens kept), or a KV-cache or prefill
method at the same budget (``snapkv:compression_ratio=0.75``), or the ``baseline``; the
default sweep puts them at 2x, 4x and 10x, so each row pairs with its counterparts.

For a prompt method every sample's documents are compressed (all samples in one batched call
on the scorer, the answering model itself, :class:`tokenreduce.prompt.Scorer`), the prompt
is rebuilt around the compressed context (instruction and question untouched) and the plain
model answers it. Besides the columns of :class:`~.longcontext.LongContextTask`:

* **tokens**: the prompt's mean length in tokens as the model reads it, and the achieved
  rate (context tokens kept over context tokens, the mean over samples);
* **compression seconds**: the median time to compress the timing prompt;
* **time to first token** includes the compression: each reduced run compresses the prompt,
  then prefills it, paired with a prefill of the full prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, process_time
from typing import Any

import torch
from torch import nn

from ... import lmtasks, methods
from ... import prompt as prompts
from ..configs import BASELINE, label
from ..measure import Steps, until_steady
from ..metrics import median, paired_times
from . import Column, Metrics, Plot, register
from .longcontext import (
    KV_COLUMNS,
    TTFT_NOISY,
    LongContextTask,
    Prompt,
    Run,
    config_budget,
    noisiest_pair,
    prefill_and_decode,
    timing_metrics,
)

#: the sub-tasks every sample set holds
SUBTASKS = ("niah", "multikey", "vt", "docqa")
#: context tokens kept by the default sweep: 2x, 4x and 10x compression
DEFAULT_RATES = (0.5, 0.25, 0.1)


def rate_sweep(name: str, depth: int, quick: bool = False) -> list[str]:
    """The default budgets of a method in this task: :data:`DEFAULT_RATES` of the context
    kept (``rate`` for prompt methods, ``compression_ratio = 1 - rate`` for the others);
    ``quick``: 4x only."""
    rates = DEFAULT_RATES[1:2] if quick else DEFAULT_RATES
    cls = methods.get(name)
    if issubclass(cls, methods.PromptMethod):
        return [methods.describe(cls(rate=r)) for r in rates]
    placed = cls.placement(depth)
    return [methods.describe(cls(**{cls.budget_param: round(1 - r, 6)}, **placed)) for r in rates]


@register
class PromptCompression(LongContextTask):
    """Accuracy, tokens, compression time and end-to-end time to first token of prompt
    compression, next to KV-cache methods at the same budget (see the module docstring)."""

    name = "prompt"
    description = (
        "prompt compression vs KV-cache compression at 2x/4x/10x on the long-context tasks "
        "(language models)"
    )
    method_kinds = ("prompt", "kv_cache", "prefill")
    subtasks = SUBTASKS
    columns = (
        Column("accuracy", "accuracy %", ".1f", True),
        Column("accuracy_kept", "kept % of full", ".1f", True),
        Column("accuracy_by_task", "accuracy % per task", "s"),
        Column("prompt_tokens", "prompt tokens", ".0f", False),
        Column("rate_achieved", "context kept", ".3f", False),
        Column("compress_s", "compress s", ".3f", False),
        Column("ttft_speedup", "TTFT speedup × (incl. compression)", ".2f", True, flag=TTFT_NOISY),
        *KV_COLUMNS,
    )
    plots = (
        Plot(
            "ttft_speedup",
            "accuracy",
            "time to first token, compression included (×)",
            "accuracy (%)",
        ),  # fmt: skip
        Plot(
            "rate_achieved",
            "accuracy",
            "share of the context's tokens kept",
            "accuracy (%)",
            x_higher_is_better=False,
        ),  # fmt: skip
    )

    @classmethod
    def default_sweep(cls, loaded) -> Callable[[str, int, bool], list[str]]:
        return rate_sweep

    def steps(self, config: str) -> int:
        compresses = config != BASELINE and methods.build(config).runs_without_patch
        return super().steps(config) + int(bool(compresses))

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        method = None if config == BASELINE else methods.build(config)
        if not isinstance(method, methods.PromptMethod):
            out = super().run(model, config, baseline, step)
            tokens = [len(p.ids) for p in self.prompts]
            return {**out, **self._prompt_metrics(tokens, [1.0] * len(tokens), 0.0, out)}
        scorer = prompts.Scorer(model, self.tokenizer)
        done = prompts.compress_batch([_prompt_of(p.sample) for p in self.prompts], method,
                                      scorer=scorer)  # fmt: skip
        step()
        shorter = [self._rebuilt(p, c.context) for p, c in zip(self.prompts, done, strict=True)]
        answers, kv_by_context, peak = self._answer_all(model, shorter, step)
        timing = self._time_compressed(model, method, scorer)
        step()
        correct = [p.sample.is_correct(t) for p, t in zip(self.prompts, answers, strict=True)]
        kind, ratio = config_budget(config)
        out = self._metrics(
            config, kind, ratio, correct, answers, kv_by_context, peak, timing, baseline
        )
        tokens = [len(p.ids) for p in shorter]
        return {**out, **self._prompt_metrics(tokens, [c.rate for c in done],
                                              timing["compress_s"], out)}  # fmt: skip

    def _rebuilt(self, prompt: Prompt, documents: list[str]) -> Prompt:
        """``prompt`` with its context made of ``documents``."""
        sample = prompt.sample.with_documents(documents)
        return Prompt(prompt.context, sample, tuple(self._encode(sample)))

    def _prompt_metrics(
        self, tokens: list[int], rates: list[float], compress_s: float, out: Metrics
    ) -> Metrics:
        by_task = {}
        for task in SUBTASKS:
            hits = [c for c, p in zip(out["correct"], self.prompts, strict=True)
                    if p.sample.task == task]  # fmt: skip
            by_task[task] = 100.0 * sum(hits) / len(hits)
        return {
            "prompt_tokens": sum(tokens) / len(tokens),
            "rate_achieved": sum(rates) / len(rates),
            "compress_s": compress_s,
            "accuracy_by_task": " · ".join(f"{t}: {a:.0f}" for t, a in by_task.items()),
            "accuracy_per_task": by_task,
        }

    def _time_compressed(
        self, model: nn.Module, method: methods.PromptMethod, scorer: prompts.Scorer
    ) -> dict[str, Any]:
        """Paired runs on the first prompt of the longest context: the full prompt's prefill
        and decoding against compressing it and then prefilling and decoding the result."""
        prompt = next(p for p in self.prompts if p.context == self.contexts[-1])
        full = torch.tensor([prompt.ids], dtype=torch.long)
        seconds: list[float] = []

        def compressed_run() -> Run:
            start, start_cpu = perf_counter(), process_time()
            (out,) = prompts.compress_batch([_prompt_of(prompt.sample)], method, scorer=scorer)
            ids = torch.tensor([self._encode(prompt.sample.with_documents(out.context))])
            wall, cpu = perf_counter() - start, process_time() - start_cpu
            seconds.append(wall)
            ttft, decode, ttft_cpu, decode_cpu = prefill_and_decode(model, ids, self.decode_tokens)
            return ttft + wall, decode, ttft_cpu + cpu, decode_cpu

        def time_once() -> tuple[list[Run], list[Run]]:
            runs: dict[str, list[Run]] = {"base": [], "reduced": []}
            paired_times(
                lambda: runs["base"].append(prefill_and_decode(model, full, self.decode_tokens)),
                lambda: runs["reduced"].append(compressed_run()),
                self.repeats,
                self.warmup,
            )
            return runs["base"][self.warmup :], runs["reduced"][self.warmup :]

        (base, red), attempts = until_steady(time_once, noisiest_pair)
        return {
            "timing_context": prompt.context,
            "timing_prompt_tokens": len(prompt.ids),
            **timing_metrics(base, red, self.decode_tokens, attempts),
            "compress_s": median(seconds[self.warmup :] or seconds),
        }

    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """At each rate, the best prompt method and the best cache method by accuracy kept."""
        lines = []
        for rate in DEFAULT_RATES:
            best = {}
            for config, m in rows:
                if m.get("ratio") is None or abs(m["ratio"] - (1 - rate)) > 1e-6:
                    continue
                side = "prompt" if m.get("method_kind") == "prompt" else "cache"
                if side not in best or m["accuracy"] > best[side][1]["accuracy"]:
                    best[side] = (config, m)
            if len(best) == 2:
                (pc, pm), (cc, cm) = best["prompt"], best["cache"]
                lines.append(
                    f"{round(1 / rate)}x: best prompt compression {label(pc)} "
                    f"{pm['accuracy']:.1f}% (TTFT {pm['ttft_speedup']:.2f}x incl. compression) vs "
                    f"best cache method {label(cc)} {cm['accuracy']:.1f}% "
                    f"(TTFT {cm['ttft_speedup']:.2f}x)"
                )
        return lines


def _prompt_of(sample: lmtasks.Sample) -> prompts.Prompt:
    return prompts.Prompt(list(sample.documents), sample.question, lmtasks.INSTRUCTION)


__all__ = ["DEFAULT_RATES", "PromptCompression", "SUBTASKS", "rate_sweep"]
