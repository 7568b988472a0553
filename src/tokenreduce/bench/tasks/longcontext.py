"""Long-context retrieval for decoder language models: ``niah``, ``multikey``, ``vt`` and
``docqa``.

The samples are the tasks of :mod:`tokenreduce.lmtasks` (RULER's needle in a haystack,
multi-key retrieval and variable tracking; question answering over documents), generated from a seed in English prose at several
context lengths, the needle at depths spread evenly over the context. For every
configuration (a KV-cache method or a prefill method at a budget, or the unreduced
``baseline``):

* **accuracy**: every sample is answered greedily (the answer's prefix is given, a few new
  tokens are generated) by a patched copy of the model; accuracy per context length, and
  the share of the samples the full model solves that the reduced model still solves
  ("kept");
* **KV bytes**: read from the cache tensors right after prefill (a forward hook on the
  model), summed over the samples, and their ratio to the full cache;
* **peak memory**: peak tensor memory (:func:`tokenreduce.bench.metrics.peak_memory_mb`, the
  storage created while it runs, not the process RSS) of answering the first batch of the
  longest context;
* **time to first token** (prefill plus the first token's logits) and **decoding tokens/s**
  (greedy steps on the reduced cache), batch 1, on the first sample of the longest context,
  timed interleaved with the unreduced model in the same process; speedups are medians of
  the paired ratios (:func:`tokenreduce.bench.metrics.paired_times`), in wall-clock time and,
  for a machine shared with other jobs, in process CPU time as well. The pairs are timed
  again while the wall-clock ratios of either quantity are too noisy to trust
  (:func:`tokenreduce.bench.measure.until_steady`); a row whose timing stays noisy has its
  TTFT or decoding figures flagged in tables and summaries (``ttft_noisy``,
  ``decode_noisy``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, process_time
from typing import Any, ClassVar

import torch
from torch import nn

import tokenreduce

from ... import lmtasks
from ..configs import BASELINE, label
from ..measure import NOISY, Steps, check_ints, fraction, reduced_model, speedup_text, until_steady
from ..metrics import median, paired_times, peak_memory_mb, timing_noise
from . import Column, Metrics, Options, Plot, Task, register

DEFAULT_CONTEXTS = (1024, 2048, 4096)
QUICK_CONTEXT, QUICK_LIMIT = 512, 2
#: the issue's targets, checked by :meth:`LongContextTask.summary`
KEPT_TARGET, KV_TOLERANCE, TTFT_TARGET, TTFT_CONTEXT = 95.0, 0.02, 1.3, 2048

#: one timed :func:`prefill_and_decode` call: seconds of (prefill + first token, decoding) in
#: wall-clock time, then the same two in process CPU time
Run = tuple[float, float, float, float]
#: the wall-clock quantities judged for noise, by the position of their seconds in a
#: :data:`Run`; each gets ``<name>_spread`` and ``<name>_noisy`` metrics
TIMED = {"ttft": 0, "decode": 1}
TTFT_NOISY, DECODE_NOISY = "ttft_noisy", "decode_noisy"


# -- helpers shared by the language-model tasks -----------------------------------------------
#: the KV-cache columns of the language-model tasks: MiB per sample of the longest context,
#: and all KV bytes over the baseline's
KV_COLUMNS = (Column("kv_mb", "KV MiB", ".2f", False), Column("kv_ratio", "KV ×base", ".3f", False))


def kv_plot(y: str, y_label: str) -> Plot:
    """The Pareto plot of metric ``y`` against the KV bytes kept after prefill."""
    return Plot(
        "kv_ratio",
        y,
        "KV-cache bytes after prefill (fraction of the full cache)",
        y_label,
        x_higher_is_better=False,
    )


def check_lm(model: nn.Module, tokenizer: Any, task: str) -> None:
    """Raise ``ValueError`` unless ``model`` is a decoder LM tokenreduce patches and
    ``tokenizer`` fits its vocabulary."""
    try:
        fits = tokenreduce.describe(model).kind == "language"
    except TypeError:
        fits = False
    if not fits:
        raise ValueError(
            f"task {task!r} needs a decoder language model (Llama, Mistral, Qwen2/3, Gemma-3 "
            f"families); got a {type(model).__name__}"
        )
    if tokenizer is None:
        raise ValueError(f"task {task!r} needs the model's tokenizer; none was loaded")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}: "
            "they do not belong together"
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token lists, left-padded as the decoder adapter needs."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (its end-of-sequence id when it has none)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


class PrefillCache:
    """Forward hook: KV-cache bytes of the first forward it sees (the prefill of a
    ``generate`` call), read from the cache tensors themselves."""

    def __init__(self) -> None:
        self.bytes: int | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        from ...lm import cache_bytes, output_cache

        if self.bytes is None:
            self.bytes = cache_bytes(output_cache(output))


def config_budget(config: str) -> tuple[str, float | None]:
    """(method kind, nominal ratio removed) of a configuration: ``("kv_cache", 0.5)`` for
    ``snapkv:compression_ratio=0.5``; the ratio is None for a fixed ``cache_budget``."""
    if config == BASELINE:
        return BASELINE, 0.0
    method = tokenreduce.methods.build(config)
    if getattr(method, "cache_budget", None) is not None:
        return method.kind, None
    if isinstance(method, tokenreduce.methods.PromptMethod):
        rate = method.effective_rate
        return method.kind, None if rate is None else 1.0 - rate
    value = getattr(method, type(method).budget_param, None)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return method.kind, float(value) if ok else None


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


# -- the task -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    """One sample ready to run: its context length, the sample, and its prompt's token ids."""

    context: int
    sample: lmtasks.Sample
    ids: tuple[int, ...]


class LongContextTask(Task):
    """Accuracy, KV bytes, memory and speed of a decoder LM on one long-context task.

    Subclasses name the task (``niah``, ``multikey``, ``vt``); everything else is shared.

    Args:
        tokenizer: the model's tokenizer (with a chat template).
        samples: context length -> samples (:func:`tokenreduce.lmtasks.make_sample`).
        source: what the prose is (``jargon-file`` or a file name); part of the data id.
        seed: the seed the samples were made with; part of the data id.
        batch_size: prompts answered at once (left-padded); timing is always batch 1.
        threads: torch threads the numbers were measured with (recorded).
        repeats, warmup: timed and untimed prefill+decode runs per side.
        max_new_tokens: tokens generated per answer (the answer is a 4-digit number).
        decode_tokens: greedy steps timed after prefill for the decoding speed.
    """

    name: ClassVar[str]
    #: the :data:`tokenreduce.lmtasks.TASKS` sampled (empty: the task's own name)
    subtasks: ClassVar[tuple[str, ...]] = ()
    model_kind = "lm"
    method_kinds = ("kv_cache", "prefill")
    columns = (
        Column("accuracy", "accuracy %", ".1f", True),
        Column("accuracy_delta", "Δ accuracy", "+.1f", True),
        Column("solved_kept", "kept % (solved)", ".1f", True),
        Column("accuracy_by_context", "accuracy % per context", "s"),
        *KV_COLUMNS,
        Column("peak_mem_mb", "peak MiB (tensors)", ".1f", False),
        # the load that makes the paired ratios disagree moves the medians too
        Column("ttft_s", "TTFT s", ".2f", False, flag=TTFT_NOISY),
        Column("ttft_speedup", "TTFT speedup ×", ".2f", True, flag=TTFT_NOISY),
        Column("decode_tok_s", "decode tok/s", ".2f", True, flag=DECODE_NOISY),
        Column("decode_speedup", "decode speedup ×", ".2f", True, flag=DECODE_NOISY),
        Column("ttft_cpu_speedup", "TTFT speedup × (CPU time)", ".2f", True),
    )
    plots = (
        Plot("ttft_speedup", "accuracy", "time-to-first-token speedup (paired, ×)", "accuracy (%)"),
        kv_plot("accuracy", "accuracy (%)"),
    )

    def __init__(
        self,
        tokenizer: Any,
        samples: dict[int, list[lmtasks.Sample]],
        *,
        source: str = "jargon-file",
        seed: int = 0,
        batch_size: int = 1,
        threads: int = 1,
        repeats: int = 3,
        warmup: int = 1,
        max_new_tokens: int = 8,
        decode_tokens: int = 16,
    ) -> None:
        check_ints(
            ("batch_size", batch_size, 1),
            ("threads", threads, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("max_new_tokens", max_new_tokens, 1),
            ("decode_tokens", decode_tokens, 1),
        )
        if not samples or not all(samples.values()):
            raise ValueError("no samples: give at least one context length with samples")
        self.tokenizer = tokenizer
        self.batch_size, self.threads = batch_size, threads
        self.repeats, self.warmup = repeats, warmup
        self.max_new_tokens, self.decode_tokens = max_new_tokens, decode_tokens
        self.pad_id = pad_id(tokenizer)
        self.prompts = [
            Prompt(ctx, s, tuple(self._encode(s))) for ctx in sorted(samples) for s in samples[ctx]
        ]
        self.contexts = tuple(sorted(samples))
        digest = hashlib.sha256()
        for p in self.prompts:
            digest.update(f"{p.context}:{p.sample.answer}:{','.join(map(str, p.ids))};".encode())
        counts = sorted({len(v) for v in samples.values()})
        per = "/".join(map(str, counts))
        self._data_id = (
            f"{self.name}:{source}:seed={seed}:ctx={'/'.join(map(str, self.contexts))}"
            f":n={per}#{digest.hexdigest()[:12]}"
        )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, loaded, options: Options) -> LongContextTask:
        """Contexts ``options.context`` (default 1024, 2048, 4096 tokens), ``options.limit``
        samples per context (default 10, needle depths spread evenly), prose from
        ``options.data`` (a text or .gz file; default the Jargon File), batch 1, seed 0,
        3 timed repeats after 1 warm-up, 16 timed decoding steps; ``quick``: one 512-token
        context, 2 samples, 1 repeat, no warm-up, 4 decoding steps."""
        q = options.quick
        contexts = tuple(options.context) or ((QUICK_CONTEXT,) if q else DEFAULT_CONTEXTS)
        limit = options.limit or (QUICK_LIMIT if q else 10)
        sentences = lmtasks.jargon_sentences(options.data)
        check_lm(loaded.model, loaded.tokenizer, cls.name)
        check_length(loaded.model, max(contexts))
        seed = 0
        samples = cls.make_samples(loaded.tokenizer, contexts, limit, seed, sentences)
        task = cls(
            loaded.tokenizer,
            samples,
            source=Path(options.data).name if options.data else "jargon-file",
            seed=seed,
            batch_size=options.batch_size or 1,
            threads=options.threads,
            repeats=options.repeats or (1 if q else 3),
            warmup=options.warmup if options.warmup is not None else (0 if q else 1),
            decode_tokens=4 if q else 16,
        )
        task.check_model(loaded.model)
        return task

    @classmethod
    def make_samples(
        cls, tokenizer: Any, contexts: Sequence[int], limit: int, seed: int, sentences: list[str]
    ) -> dict[int, list[lmtasks.Sample]]:
        """``limit`` samples of each of :attr:`subtasks` per context length, needle depths
        spread evenly."""
        return {
            ctx: [
                lmtasks.make_sample(task, tokenizer, ctx, (i + 0.5) / limit, seed + i, sentences)
                for task in cls.subtasks or (cls.name,)
                for i in range(limit)
            ]
            for ctx in contexts
        }

    def _encode(self, sample: lmtasks.Sample) -> list[int]:
        tok = self.tokenizer
        text = tok.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
        return list(tok(text + sample.answer_prefix, add_special_tokens=False).input_ids)

    @property
    def setting(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "max_new_tokens": self.max_new_tokens,
            "decode_tokens": self.decode_tokens,
        }

    def _batches(self, prompts: list[Prompt] | None = None) -> list[list[Prompt]]:
        out = []
        for ctx in self.contexts:
            group = [p for p in prompts or self.prompts if p.context == ctx]
            out += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return out

    def steps(self, config: str) -> int:
        return len(self._batches()) + 1  # answer batches, timing

    def check_model(self, model: nn.Module) -> None:
        check_lm(model, self.tokenizer, self.name)
        check_length(model, max(len(p.ids) for p in self.prompts) + self.max_new_tokens)

    # -- measurement ---------------------------------------------------------------------------
    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        kind, ratio = config_budget(config)
        with reduced_model(model, config) as (reduced, _):
            answers, kv_by_context, peak = self._answer_all(reduced, self.prompts, step)
            timing = self._time(model, reduced, config == BASELINE)
            step()
        correct = [p.sample.is_correct(t) for p, t in zip(self.prompts, answers, strict=True)]
        return self._metrics(
            config, kind, ratio, correct, answers, kv_by_context, peak, timing, baseline
        )

    def _answer_all(
        self, model: nn.Module, prompts: list[Prompt], step: Steps
    ) -> tuple[list[str], dict[int, int], float | None]:
        """Greedy answers to ``prompts`` in batches (one ``step`` each), the KV bytes after
        prefill per context length, and the peak memory of the first batch of the longest."""
        answers, kv_by_context, peak = [], {c: 0 for c in self.contexts}, None
        longest = self.contexts[-1]
        for batch in self._batches(prompts):
            watch = peak is None and batch[0].context == longest
            texts, kv, batch_peak = self._answer(model, batch, watch)
            peak = batch_peak if watch else peak
            answers += texts
            kv_by_context[batch[0].context] += kv
            step()
        return answers, kv_by_context, peak

    def _answer(
        self, model: nn.Module, batch: list[Prompt], watch: bool
    ) -> tuple[list[str], int, float | None]:
        """Greedy answers of one batch, its KV bytes after prefill and, with ``watch``, the
        peak tensor memory of the whole ``generate`` call (else None)."""
        from transformers import GenerationConfig

        ids, mask = left_pad([p.ids for p in batch], self.pad_id)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=eos if eos is not None else self.tokenizer.eos_token_id,
        )
        hook = PrefillCache()
        removable = model.register_forward_hook(hook)
        out: dict[str, Any] = {}

        def run() -> None:
            out["seq"] = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)

        try:
            with torch.inference_mode():
                peak = peak_memory_mb(run) if watch else None
                if not watch:
                    run()
        finally:
            removable.remove()
        texts = self.tokenizer.batch_decode(out["seq"][:, ids.shape[1] :], skip_special_tokens=True)
        if hook.bytes is None:
            raise RuntimeError("generate ran no forward pass: no KV cache to measure")
        return texts, hook.bytes, peak

    def _time(self, model: nn.Module, reduced: nn.Module, is_baseline: bool) -> dict[str, Any]:
        """Paired TTFT and decoding times on the first prompt of the longest context, timed
        again while noisy (:func:`noisiest_pair`), and their metrics (:func:`timing_metrics`)."""
        prompt = next(p for p in self.prompts if p.context == self.contexts[-1])
        ids = torch.tensor([prompt.ids], dtype=torch.long)
        (base, red), attempts = until_steady(
            lambda: timed_runs(model, reduced, ids, self.decode_tokens, self.repeats,
                               self.warmup, is_baseline),
            noisiest_pair,
        )  # fmt: skip
        return {
            "timing_context": prompt.context,
            "timing_prompt_tokens": len(prompt.ids),
            **timing_metrics(base, red, self.decode_tokens, attempts),
        }

    def _metrics(
        self,
        config: str,
        kind: str,
        ratio: float | None,
        correct: list[bool],
        answers: list[str],
        kv_by_context: dict[int, int],
        peak: float | None,
        timing: dict[str, Any],
        baseline: dict[str, Any] | None,
    ) -> dict[str, Any]:
        n = len(correct)
        accuracy = 100.0 * sum(correct) / n
        by_context = {}
        for ctx in self.contexts:
            hits = [c for c, p in zip(correct, self.prompts, strict=True) if p.context == ctx]
            by_context[str(ctx)] = 100.0 * sum(hits) / len(hits)
        base = baseline or {}
        base_correct = base.get("correct", correct)
        solved = [i for i, c in enumerate(base_correct) if c]
        kv = sum(kv_by_context.values())
        base_kv = base.get("kv_bytes", kv)
        longest = self.contexts[-1]
        per_longest = sum(p.context == longest for p in self.prompts)
        base_peak = base.get("peak_mem_mb", peak)
        return {
            "method_kind": kind,
            "ratio": ratio,
            "accuracy": accuracy,
            "accuracy_delta": accuracy - base.get("accuracy", accuracy),
            "accuracy_kept": _pct(accuracy, base.get("accuracy", accuracy)),
            "solved_kept": _pct(sum(correct[i] for i in solved), len(solved)),
            "solved": len(solved),
            "accuracy_by_context": " · ".join(f"{c}: {a:.0f}" for c, a in by_context.items()),
            "accuracy_per_context": by_context,
            "samples": n,
            "correct": [int(c) for c in correct],
            "outputs": answers,
            "kv_bytes": kv,
            "kv_bytes_per_context": {str(c): b for c, b in kv_by_context.items()},
            "kv_mb": kv_by_context[longest] / per_longest / 2**20,
            "kv_ratio": fraction(kv, base_kv),
            "peak_mem_mb": peak,
            "mem_ratio": fraction(peak, base_peak) if peak else None,
            **timing,
            "repeats": self.repeats,
            "warmup": self.warmup,
        }

    # -- findings -------------------------------------------------------------------------------
    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The best configuration at 50% compression and whether the targets are met:
        >= 95% of the samples the full model solves kept at 50%, KV bytes within 2% of the
        compression ratio, >= 1.3x time to first token for 50% prefill pruning at 2k tokens."""
        findings = (_unsolved_note, _best_at_half, _kv_bytes_finding, _ttft_finding)
        return [line for line in (finding(rows) for finding in findings) if line is not None]


def _unsolved_note(rows: list[tuple[str, dict[str, Any]]]) -> str | None:
    """A warning when the baseline row solves no sample (accuracy kept is then undefined)."""
    base = dict(rows).get(BASELINE)
    if base is None or base.get("solved"):
        return None
    return (
        "the full model solves no sample: accuracy kept is undefined (try shorter "
        "contexts or a stronger model)"
    )


def _best_at_half(rows: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The configuration at ratio 0.5 keeping the most solved samples, against KEPT_TARGET."""
    half = [
        (c, m)
        for c, m in rows
        if c != BASELINE and m.get("ratio") == 0.5 and m.get("solved_kept") is not None
    ]
    if not half:
        return None
    c, m = max(
        half,
        key=lambda cm: (cm[1]["solved_kept"], cm[1]["accuracy"], cm[1]["ttft_speedup"]),
    )
    met = "met" if m["solved_kept"] >= KEPT_TARGET else "missed"
    return (
        f"best at 50% compression: {label(c)} keeps {m['solved_kept']:.1f}% of the "
        f"{m['solved']} samples the full model solves (accuracy {m['accuracy']:.1f}%, "
        f"{m['accuracy_delta']:+.1f}); target >= {KEPT_TARGET:.0f}%: {met}"
    )


def _kv_bytes_finding(rows: list[tuple[str, dict[str, Any]]]) -> str | None:
    """How many KV-cache rows keep KV bytes within KV_TOLERANCE of 1 - ratio, and the worst."""
    kv_rows = [
        (c, m["kv_ratio"] / (1 - m["ratio"]) - 1)
        for c, m in rows
        if m.get("method_kind") == "kv_cache"
        and m.get("ratio") is not None
        and m.get("kv_ratio") is not None
    ]
    if not kv_rows:
        return None
    worst_c, worst = max(kv_rows, key=lambda ce: abs(ce[1]))
    ok = sum(abs(e) <= KV_TOLERANCE for _, e in kv_rows)
    met = "met" if ok == len(kv_rows) else "missed"
    return (
        f"KV bytes after prefill within {KV_TOLERANCE:.0%} of 1 - compression ratio: "
        f"{ok}/{len(kv_rows)} KV-cache configurations (worst {label(worst_c)}: "
        f"{worst:+.2%}); target: {met}"
    )


def _ttft_finding(rows: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The fastest 50% prefill-pruning row's time-to-first-token speedup, against
    TTFT_TARGET (judged only when timed at TTFT_CONTEXT tokens)."""
    prefill = [
        (c, m)
        for c, m in rows
        if m.get("method_kind") == "prefill"
        and m.get("ratio") == 0.5
        and m.get("ttft_speedup") is not None
    ]
    if not prefill:
        return None
    c, m = max(prefill, key=lambda cm: cm[1]["ttft_speedup"])
    ctx = m.get("timing_context")
    if ctx == TTFT_CONTEXT:
        verdict = "met" if m["ttft_speedup"] >= TTFT_TARGET else "missed"
    else:
        verdict = f"not measured at {TTFT_CONTEXT} tokens"
    if m.get(TTFT_NOISY):
        verdict += " (timing too noisy to trust)"
    return (
        f"prefill pruning of 50%: {label(c)} gives {speedup_text(m, 'ttft_speedup', TTFT_NOISY)} "
        f"time to first token at {ctx} tokens; target >= {TTFT_TARGET}x at {TTFT_CONTEXT}: "
        f"{verdict}"
    )


def wall_pairs(base: list[Run], red: list[Run]) -> dict[str, tuple[list[float], list[float]]]:
    """Paired wall-clock seconds of each :data:`TIMED` quantity: name -> (unreduced, reduced)."""
    return {name: ([b[i] for b in base], [r[i] for r in red]) for name, i in TIMED.items()}


def noisiest_pair(runs: tuple[list[Run], list[Run]]) -> tuple[list[float], list[float]]:
    """The paired wall-clock seconds of the :data:`TIMED` quantity whose ratios spread most
    (:func:`~tokenreduce.bench.metrics.timing_noise`): a timing is steady when even that one
    is, so :func:`~tokenreduce.bench.measure.until_steady` judges it by this pair."""
    return max(wall_pairs(*runs).values(), key=lambda pair: timing_noise(*pair)[0])


def noise_metrics(base: list[Run], red: list[Run], attempts: int) -> dict[str, Any]:
    """``ttft_spread`` / ``ttft_noisy`` and ``decode_spread`` / ``decode_noisy`` (relative
    interquartile range of the paired wall-clock ratios, and whether it is above
    :data:`~tokenreduce.bench.metrics.NOISY_SPREAD`), ``timing_attempts``, and the row-wide
    ``timing_noisy`` (either quantity noisy) with ``speedup_spread`` (the larger spread)
    that the tables' footnotes read (:func:`tokenreduce.bench.report.table_notes`)."""
    values: dict[str, Any] = {}
    for name, pair in wall_pairs(base, red).items():
        values[f"{name}_spread"], values[f"{name}_noisy"] = timing_noise(*pair)
    values["speedup_spread"] = max(values[f"{name}_spread"] for name in TIMED)
    values[NOISY] = any(values[f"{name}_noisy"] for name in TIMED)
    values["timing_attempts"] = attempts
    return values


def timing_metrics(
    base: list[Run], red: list[Run], decode_tokens: int, attempts: int
) -> dict[str, Any]:
    """The speed metrics of paired runs (:data:`Run`: seconds) of the unreduced and the
    reduced model, ``decode_tokens`` steps decoded per run, after ``attempts`` timings:
    median TTFT seconds and decoding tokens/s of each side, speedups as medians of the paired
    ratios (wall-clock and process CPU time), the raw TTFT seconds, and how noisy the
    wall-clock ratios are (:func:`noise_metrics`). Raises ``ValueError`` for unpaired or
    non-positive times."""

    def ratio(i: int) -> float:
        """Median over the pairs of base time / reduced time of measure ``i``."""
        return median([b[i] / r[i] for b, r in zip(base, red, strict=True)])

    noise = noise_metrics(base, red, attempts)  # checks the pairing first
    return {
        "ttft_s": median([r[0] for r in red]),
        "baseline_ttft_s": median([b[0] for b in base]),
        "ttft_speedup": ratio(0),
        "decode_tok_s": decode_tokens / median([r[1] for r in red]),
        "baseline_decode_tok_s": decode_tokens / median([b[1] for b in base]),
        "decode_speedup": ratio(1),
        # process CPU time: less sensitive than wall time to other jobs on a shared machine
        "ttft_cpu_speedup": ratio(2),
        "decode_cpu_speedup": ratio(3),
        "ttft_s_all": [r[0] for r in red],
        "baseline_ttft_s_all": [b[0] for b in base],
        "ttft_cpu_s_all": [r[2] for r in red],
        "baseline_ttft_cpu_s_all": [b[2] for b in base],
        **noise,
    }


def prefill_and_decode(
    model: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor], steps: int
) -> tuple[float, float, float, float]:
    """Seconds of (prefill + first token) and of ``steps`` greedy decoding steps after it,
    in wall-clock time, then the same two in process CPU time (all threads). ``inputs``: the
    prompt's ids, or every input of the prompt's forward (a vision-language model's images)."""
    from ...lm import cache_kwargs, output_cache

    inputs = {"input_ids": inputs} if torch.is_tensor(inputs) else inputs
    with torch.inference_mode():
        start, start_cpu = perf_counter(), process_time()
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        first, first_cpu = perf_counter(), process_time()
        cache = cache_kwargs(model, output_cache(out))
        for _ in range(steps):
            out = model(input_ids=nxt, **cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        end, end_cpu = perf_counter(), process_time()
    return first - start, end - first, first_cpu - start_cpu, end_cpu - first_cpu


def timed_runs(
    model: nn.Module,
    reduced: nn.Module,
    inputs: torch.Tensor | dict[str, torch.Tensor],
    decode_tokens: int,
    repeats: int,
    warmup: int,
    is_baseline: bool,
) -> tuple[list[Run], list[Run]]:
    """One set of paired :func:`prefill_and_decode` runs of ``inputs`` (``warmup`` untimed,
    then ``repeats`` timed per side): the unreduced and the reduced model's timed runs. The
    baseline is timed once per repeat and paired with itself."""
    runs: dict[str, list[Run]] = {"base": [], "reduced": []}

    def call(m: nn.Module, side: str) -> Callable[[], None]:
        return lambda: runs[side].append(prefill_and_decode(m, inputs, decode_tokens))

    if is_baseline:
        for _ in range(warmup + repeats):
            call(model, "base")()
        runs["reduced"] = runs["base"]
    else:
        paired_times(call(model, "base"), call(reduced, "reduced"), repeats, warmup)
    return runs["base"][warmup:], runs["reduced"][warmup:]


def check_length(model: nn.Module, tokens: int) -> None:
    """Fail clearly when ``tokens`` exceed the model's position range."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and tokens > limit:
        raise ValueError(
            f"{tokens} tokens exceed the model's max_position_embeddings={limit}; "
            "use shorter --context lengths"
        )


@register
class NeedleInAHaystack(LongContextTask):
    """One needle ("The secret number is 4817.") at a depth of the context; recall it."""

    name = "niah"
    description = "needle in a haystack: recall a number hidden in long prose (language models)"


@register
class MultiKey(LongContextTask):
    """Four keyed needles; recall the number of one key (the others are distractors)."""

    name = "multikey"
    description = "multi-key retrieval: one keyed number among distractors (language models)"


@register
class DocumentQA(LongContextTask):
    """Made-up biographies padded with prose; name one person's city of birth."""

    name = "docqa"
    description = "question answering over many short documents, one relevant (language models)"


@register
class VariableTracking(LongContextTask):
    """A value passed along a chain of variable assignments; name the last one's value."""

    name = "vt"
    description = "variable tracking: follow a chain of assignments in long prose (language models)"


__all__ = [
    "DocumentQA",
    "LongContextTask",
    "MultiKey",
    "NeedleInAHaystack",
    "PrefillCache",
    "VariableTracking",
    "KV_COLUMNS",
    "DECODE_NOISY",
    "TIMED",
    "TTFT_NOISY",
    "Run",
    "check_length",
    "check_lm",
    "config_budget",
    "kv_plot",
    "left_pad",
    "noise_metrics",
    "noisiest_pair",
    "prefill_and_decode",
    "timed_runs",
    "timing_metrics",
    "wall_pairs",
]
