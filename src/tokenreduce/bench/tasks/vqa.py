"""Visual question answering for vision-language models: ``vqa``.

The questions are the held-out test split of :mod:`tokenreduce.data.vqa`: seeded multi-object
scenes (``scenes``: presence, colour, shape, count and relation questions) or easy-VQA
(``easy-vqa``: presence, colour, shape). Each question is asked about its image in the model's
chat prompt (:func:`tokenreduce.assets.llava_shapes.encode`), and answered greedily, in
batches with left padding. For every configuration (a token method at the handoff from the
vision side to the language model, a prefill method pruning image tokens inside it, or the
unreduced ``baseline``):

* **accuracy**: exact match of the answer's first word, overall and per question type, and
  the share of the full model's accuracy kept;
* **visual tokens**: the image tokens the language model's layers attend over, averaged
  over its layers (:func:`layer_mean_image_tokens`, read from ``handle.trace.prefill_kept``:
  the prompt tokens each site kept, against the image placeholders; a reduction at the
  handoff holds in every layer, one inside the model from its site on), mean per image, their share of the image's tokens, and their standard deviation over
  the questions (0 under a uniform budget; an adaptive budget, ``adaptive=entropy`` and the
  like, gives each image its own count at the same mean: the summary sets each adaptive row
  against its uniform twin);
* **KV bytes** after prefill (read from the cache tensors) and their ratio to the full cache;
* **peak memory** (tensors) of answering the first batch;
* **time to first token** and **decoding tokens/s**, batch 1, on the first question, timed
  interleaved with the unreduced model in the same process; speedups are medians of the paired
  ratios, timed again while either is too noisy to trust and flagged if they stay so (as in
  :mod:`.longcontext`);
* **token maps** of the kept visual tokens over the first images, in the report.

Prefill GFLOPs are not reported: the adapter's analytic count (``handle.gflops()``) is the
cost of one decoding step of the language model, and the vision tower's cost is not in it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import tokenreduce

from ... import methods
from ...adapters.hf_vlm.llava import square_grid
from ...core.state import TokenState
from ...methods.prefill import PrefillMethod
from ..configs import BASELINE, label
from ..measure import Steps, check_ints, fraction, reduced_model, speedup_text, until_steady
from ..metrics import peak_memory_mb
from . import Column, Metrics, Options, Plot, Task, register
from .longcontext import (
    DECODE_NOISY,
    KV_COLUMNS,
    TTFT_NOISY,
    PrefillCache,
    kv_plot,
    noisiest_pair,
    timed_runs,
    timing_metrics,
)

#: the default sweep's shares of visual tokens kept (the literature's 288 / 144 / 64 of 576)
KEEP_SHARES = (0.5, 0.25, 0.11)
#: the data sets ``--split`` names
SPLITS = ("scenes", "easy-vqa")
DEFAULT_LIMIT, QUICK_LIMIT = 200, 8
#: the issue's target, checked by :meth:`VisualQuestionAnswering.summary`
KEPT_TARGET, TTFT_TARGET, TARGET_SHARE = 95.0, 1.5, 0.25
#: questions about the first images drawn as token maps in the report
PICTURES = 4


# -- the default sweep ------------------------------------------------------------------------
def keep_share_sweep(model: nn.Module) -> Callable[[str, int, bool], list[str]]:
    """``sweep(name, depth, quick) -> specs`` keeping :data:`KEEP_SHARES` of the visual tokens:
    a method whose budget is a ``keep_ratio`` keeps each share, one whose budget is a
    ``prune_ratio`` removes the rest; each placed by the depth it sees in ``model``
    (``tokenreduce.describe(model, cls).num_layers``: 1 for a token method at the handoff).
    Other budgets run the method's own default sweep. ``quick``: the 25% share only."""

    def sweep(name: str, depth: int, quick: bool) -> list[str]:
        cls = methods.get(name)
        depth = tokenreduce.describe(model, cls).num_layers
        shares = KEEP_SHARES[1:2] if quick else KEEP_SHARES
        if cls.budget_param == "keep_ratio":
            values = list(shares)
        elif cls.budget_param == "prune_ratio":
            values = [round(1.0 - s, 2) for s in shares]
        else:
            return [methods.describe(m) for m in cls.default_sweep(depth, quick)]
        place = cls.placement(depth)
        return [methods.describe(cls(**{cls.budget_param: v}, **place)) for v in values]

    return sweep


# -- what one batch tells --------------------------------------------------------------------
def accuracy_by_type(correct: list[bool], qtypes: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Exact-match accuracy (%) per question type, types in sorted order. Raises
    ``ValueError`` when the lists differ in length or are empty."""
    if len(correct) != len(qtypes) or not correct:
        raise ValueError(
            f"need one question type per answer, at least one; got {len(correct)} answers and "
            f"{len(qtypes)} types"
        )
    out = {}
    for qtype in sorted(set(qtypes)):
        hits = [c for c, t in zip(correct, qtypes, strict=True) if t == qtype]
        out[qtype] = 100.0 * sum(hits) / len(hits)
    return out


def kept_image_tokens(kept: torch.Tensor | None, placeholders: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: which image placeholders of the prompt the language model ran on.

    ``kept``: (B, M) prompt token indices kept (``handle.trace.prefill_kept[-1]``), -1 for
    filler; None when nothing was removed (every placeholder kept). ``placeholders``: (B, L)
    bool, the image tokens of the (padded) prompt."""
    if kept is None:
        return placeholders.clone()
    mask = torch.zeros_like(placeholders)
    rows, cols = (kept >= 0).nonzero(as_tuple=True)
    mask[rows, kept[rows, cols].to(placeholders.device)] = True
    return mask & placeholders


def layer_mean_image_tokens(handle: Any, placeholders: torch.Tensor) -> torch.Tensor:
    """(B,) float: the image tokens each prompt's language-model layers attend over, averaged
    over the layers, so that methods pruning at one layer, at several or before the first
    compare at equal cost.

    A reduction at the handoff (a token method) holds from the first layer on. A prefill
    method's site at layer ``l`` selects after that layer's attention: layers up to ``l``
    count the tokens the previous site left (all before the first site), later layers the
    tokens the site kept. ``placeholders``: (B, L) bool, the prompt's image tokens."""
    kept = getattr(handle.trace, "prefill_kept", None) or []
    full = placeholders.sum(1).float()
    if not kept:
        return full
    counts = [kept_image_tokens(k, placeholders).sum(1).float() for k in kept]
    if not isinstance(handle.method, PrefillMethod):
        return counts[-1]
    depth = handle.info.num_layers
    sites = handle.method.sites(depth)
    bounds = [*(site + 1 for site in sites), depth]
    total = full * bounds[0]
    for count, start, end in zip(counts, bounds[:-1], bounds[1:], strict=True):
        total = total + count * (end - start)
    return total / depth


def patch_state(kept: torch.Tensor) -> TokenState:
    """The token state of one image whose patches ``kept`` (N,) bool survived on their own:
    what :func:`tokenreduce.viz.token_map` draws (dropped patches greyed)."""
    index = kept.nonzero().squeeze(1)
    source = torch.full((1, kept.numel()), -1, dtype=torch.long)
    source[0, index] = torch.arange(index.numel())
    ones = torch.ones(1, index.numel())
    return TokenState(ones, source, index[None].clone(), torch.zeros_like(ones, dtype=torch.bool))


def load_questions(split: str, limit: int) -> Any:
    """The first ``limit`` questions of the held-out test split of ``split`` (:data:`SPLITS`):
    a :class:`tokenreduce.data.vqa.VQASplit`. Raises ``ValueError`` for another name and
    ``ImportError`` (saying what to install) when easy-VQA's package is missing."""
    from ...data import vqa

    check_ints(("limit", limit, 1))
    if split == "easy-vqa":
        return vqa.easy_vqa("test", limit)
    if split != "scenes":
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    data = vqa.scenes_vqa("test", count=limit)  # at least one question per scene
    return data.subset(range(min(limit, len(data))))


# -- the task -----------------------------------------------------------------------------------
@register
class VisualQuestionAnswering(Task):
    """Accuracy, visual tokens, KV bytes, memory and speed of a vision-language model answering
    questions about images.

    Args:
        processor: the model's processor (images and chat prompts; its tokenizer pads left).
        questions: a :class:`tokenreduce.data.vqa.VQASplit`; one image per question.
        batch_size: questions answered at once (left-padded); timing is always batch 1.
        threads: torch threads the numbers were measured with (recorded).
        repeats, warmup: timed and untimed prefill+decode runs per side.
        max_new_tokens: tokens generated per answer (answers are one word).
        decode_tokens: greedy steps timed after prefill for the decoding speed.
    """

    name = "vqa"
    description = (
        "visual question answering: accuracy per question type against visual tokens kept "
        "and time to first token (vision-language models)"
    )
    model_kind = "vlm"
    method_kinds = ("tokens", "prefill")
    splits = SPLITS
    columns = (
        Column("accuracy", "accuracy %", ".1f", True),
        Column("accuracy_delta", "Δ accuracy", "+.1f", True),
        Column("accuracy_kept", "kept % (accuracy)", ".1f", True),
        Column("accuracy_by_type", "accuracy % per type", "s"),
        Column("visual_tokens", "visual tokens / image", ".1f", False),
        Column("visual_tokens_sd", "visual tokens sd", ".1f"),
        *KV_COLUMNS,
        Column("peak_mem_mb", "peak MiB (tensors)", ".1f", False),
        Column("ttft_s", "TTFT s", ".3f", False, flag=TTFT_NOISY),
        Column("ttft_speedup", "TTFT speedup ×", ".2f", True, flag=TTFT_NOISY),
        Column("decode_tok_s", "decode tok/s", ".1f", True, flag=DECODE_NOISY),
        Column("decode_speedup", "decode speedup ×", ".2f", True, flag=DECODE_NOISY),
    )
    plots = (
        Plot("ttft_speedup", "accuracy", "time-to-first-token speedup (paired, ×)", "accuracy (%)"),
        Plot(
            "visual_tokens",
            "accuracy",
            "visual tokens per image",
            "accuracy (%)",
            x_higher_is_better=False,
        ),
        kv_plot("accuracy", "accuracy (%)"),
    )

    def __init__(
        self,
        processor: Any,
        questions: Any,
        *,
        batch_size: int = 8,
        threads: int = 1,
        repeats: int = 3,
        warmup: int = 1,
        max_new_tokens: int = 4,
        decode_tokens: int = 8,
    ) -> None:
        check_ints(
            ("batch_size", batch_size, 1),
            ("threads", threads, 1),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
            ("max_new_tokens", max_new_tokens, 1),
            ("decode_tokens", decode_tokens, 1),
        )
        if len(questions) == 0:
            raise ValueError("no questions to answer")
        if processor is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError("task 'vqa' needs the model's processor (images and prompts)")
        processor.tokenizer.padding_side = "left"  # batched generation continues on the right
        self.processor, self.questions = processor, questions
        self.batch_size, self.threads = batch_size, threads
        self.repeats, self.warmup = repeats, warmup
        self.max_new_tokens, self.decode_tokens = max_new_tokens, decode_tokens
        self._data_id = f"vqa:{questions.name}:n={len(questions)}#{_digest(questions)}"

    @classmethod
    def from_options(cls, loaded, options: Options) -> VisualQuestionAnswering:
        """The scenes test split (``options.split``: ``scenes`` or ``easy-vqa``), its first
        ``options.limit`` questions (default 200), batches of 8, 3 timed repeats after 1
        warm-up, 8 timed decoding steps; ``quick``: 8 questions, 1 repeat, no warm-up, 4
        decoding steps."""
        q = options.quick
        questions = load_questions(
            options.split or SPLITS[0], options.limit or (QUICK_LIMIT if q else DEFAULT_LIMIT)
        )
        task = cls(
            loaded.processor,
            questions,
            batch_size=options.batch_size or 8,
            threads=options.threads,
            repeats=options.repeats or (1 if q else 3),
            warmup=options.warmup if options.warmup is not None else (0 if q else 1),
            decode_tokens=4 if q else 8,
        )
        task.check_model(loaded.model)
        return task

    @classmethod
    def default_sweep(cls, loaded) -> Callable[[str, int, bool], list[str]]:
        return keep_share_sweep(loaded.model)

    @property
    def setting(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "max_new_tokens": self.max_new_tokens,
            "decode_tokens": self.decode_tokens,
        }

    def check_model(self, model: nn.Module) -> None:
        try:
            kind = tokenreduce.describe(model).kind
        except TypeError:
            kind = None
        if kind != "vision-language":
            raise ValueError(
                f"task 'vqa' needs a vision-language model (LLaVA); got a {type(model).__name__}"
            )
        vocab = model.get_input_embeddings().num_embeddings
        if len(self.processor.tokenizer) > vocab:
            raise ValueError(
                f"the processor's tokenizer has {len(self.processor.tokenizer)} tokens but the "
                f"model embeds only {vocab}: they do not belong together"
            )

    def _batches(self) -> list[list[int]]:
        n = len(self.questions)
        return [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]

    def steps(self, config: str) -> int:
        return len(self._batches()) + 1  # answer batches, timing

    def _inputs(self, model: nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        """The processor's tensors for the questions ``indices`` (left-padded), on the
        model's device; ``generate`` derives positions from the mask itself."""
        from ...assets.llava_shapes import encode

        q = self.questions
        images = [q.images[q.image_index[i]] for i in indices]
        enc = encode(self.processor, images, [q.questions[i] for i in indices])
        enc.pop("position_ids", None)
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    # -- measurement ---------------------------------------------------------------------------
    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        words: list[str] = []
        kept: list[float] = []
        per_image: list[int] = []
        kv, peak = 0, None
        with reduced_model(model, config) as (reduced, handle):
            for n, batch in enumerate(self._batches()):
                answer = self._answer(reduced, handle, batch, watch=n == 0)
                words += answer["words"]
                kept += answer["kept"]
                per_image += answer["per_image"]
                kv += answer["kv_bytes"]
                peak = answer["peak"] if n == 0 else peak
                step()
            timing = self._time(model, reduced, config == BASELINE)
            step()
        return self._metrics(words, kept, per_image, kv, peak, timing, baseline)

    def _answer(
        self, model: nn.Module, handle: Any, batch: list[int], watch: bool
    ) -> dict[str, Any]:
        """Greedy one-word answers of one batch, the visual tokens kept of each question's image
        and the image's tokens, the KV bytes after prefill and, with ``watch``, the peak tensor
        memory of the whole ``generate`` call (else None)."""
        from ...assets.llava_shapes import answer_word

        inputs = self._inputs(model, batch)
        tokenizer = self.processor.tokenizer
        hook = PrefillCache()
        removable = model.register_forward_hook(hook)
        out: dict[str, Any] = {}

        def run() -> None:
            out["seq"] = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )

        peak = None
        try:
            with torch.inference_mode():
                if watch:
                    peak = peak_memory_mb(run)
                else:
                    run()
        finally:
            removable.remove()
        if hook.bytes is None:
            raise RuntimeError("generate ran no forward pass: no KV cache to measure")
        texts = tokenizer.batch_decode(
            out["seq"][:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        placeholders = inputs["input_ids"] == model.config.image_token_id
        return {
            "words": [answer_word(t) for t in texts],
            "kept": layer_mean_image_tokens(handle, placeholders).tolist(),
            "per_image": placeholders.sum(1).tolist(),
            "kv_bytes": hook.bytes,
            "peak": peak,
        }

    def _time(self, model: nn.Module, reduced: nn.Module, is_baseline: bool) -> dict[str, Any]:
        """Paired TTFT and decoding times on the first question, batch 1, timed again while
        noisy (:func:`~.longcontext.noisiest_pair`), and their metrics."""
        inputs = self._inputs(model, [0])
        (base, red), attempts = until_steady(
            lambda: timed_runs(model, reduced, inputs, self.decode_tokens, self.repeats,
                               self.warmup, is_baseline),
            noisiest_pair,
        )  # fmt: skip
        return {
            "timing_prompt_tokens": int(inputs["input_ids"].shape[1]),
            **timing_metrics(base, red, self.decode_tokens, attempts),
            "repeats": self.repeats,
            "warmup": self.warmup,
        }

    def _metrics(
        self,
        words: list[str],
        kept: list[float],
        per_image: list[int],
        kv: int,
        peak: float | None,
        timing: dict[str, Any],
        baseline: Metrics | None,
    ) -> Metrics:
        q = self.questions
        correct = [w == a for w, a in zip(words, q.answers, strict=True)]
        accuracy = 100.0 * sum(correct) / len(correct)
        by_type = accuracy_by_type(correct, q.qtypes)
        base = baseline or {}
        base_accuracy = base.get("accuracy", accuracy)
        visual = float(np.mean(kept))
        return {
            "accuracy": accuracy,
            "accuracy_delta": accuracy - base_accuracy,
            "accuracy_kept": 100.0 * accuracy / base_accuracy if base_accuracy else None,
            "accuracy_by_type": " · ".join(f"{t}: {a:.0f}" for t, a in by_type.items()),
            "accuracy_per_type": by_type,
            "questions": len(correct),
            "correct": [int(c) for c in correct],
            "outputs": words,
            "visual_tokens": visual,
            "visual_tokens_sd": float(np.std(kept)),
            "visual_tokens_each": [round(float(k), 2) for k in kept],
            "visual_share": visual / float(np.mean(per_image)),
            "image_tokens": float(np.mean(per_image)),
            "kv_bytes": kv,
            "kv_mb": kv / len(correct) / 2**20,
            "kv_ratio": fraction(kv, base.get("kv_bytes", kv)),
            "peak_mem_mb": peak,
            "mem_ratio": fraction(peak, base.get("peak_mem_mb", peak)),
            **timing,
        }

    # -- pictures -------------------------------------------------------------------------------
    def _picture_questions(self) -> list[int]:
        """The first question about each of the first :data:`PICTURES` images."""
        first: dict[int, int] = {}
        for i, image in enumerate(self.questions.image_index.tolist()):
            first.setdefault(image, i)
            if len(first) == PICTURES:
                break
        return sorted(first.values())

    def pictures(self, model: nn.Module, config: str) -> dict[str, bytes]:
        """Token maps of the visual tokens kept over the first images (the plain image for
        the baseline), dropped patches grey. Merged groups are tinted when the handoff's token
        state records them (``handle.state``); otherwise each token the language model runs
        on is drawn at its own patch (a merged token's anchor) and the rest grey."""
        from PIL import Image

        from ... import viz

        indices = self._picture_questions()
        inputs = self._inputs(model, indices)
        placeholders = inputs["input_ids"] == model.config.image_token_id
        with reduced_model(model, config) as (reduced, handle), torch.inference_mode():
            reduced(**inputs)
            kept = kept_image_tokens(last_kept(handle), placeholders).cpu()
            state, prefix = handle.state, handle.info.num_prefix
        out = {}
        for b, i in enumerate(indices):
            image = self.questions.images[self.questions.image_index[i]]
            scale = max(1, 224 // image.shape[1])
            tokens = kept[b][placeholders[b].cpu()]
            # the grid the image ran at, read from its tokens (the tower's configured size
            # may differ)
            grid = square_grid(tokens.numel() - prefix)
            if config == BASELINE or grid is None:
                picture = Image.fromarray(image).resize((image.shape[1] * scale,) * 2)
            else:
                shown, extra = _image_state(state, b, tokens, grid)
                picture = viz.token_map(image, shown, grid, extra, scale=scale)
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            out[f"question-{i}"] = buf.getvalue()
        return out

    # -- findings -------------------------------------------------------------------------------
    @classmethod
    def summary(cls, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The configuration keeping the most accuracy at <= 25% and at <= 11% of the visual
        tokens, and whether the target is met: >= 95% of the full model's accuracy kept at
        25% of the visual tokens with >= 1.5x time to first token; then each adaptive budget
        against the same method's uniform budget at the same mean (:func:`adaptive_vs_uniform`)."""
        base = dict(rows).get(BASELINE)
        if base is not None and not base.get("accuracy"):
            return ["the full model answers no question right: accuracy kept is undefined"]
        best = [line for share in KEEP_SHARES[1:] if (line := _best_at(rows, share)) is not None]
        return best + adaptive_vs_uniform(rows)


def _best_at(rows: list[tuple[str, dict[str, Any]]], share: float) -> str | None:
    """The row at <= ``share`` of the visual tokens (measured) keeping the most accuracy; the
    target verdict at :data:`TARGET_SHARE`."""
    fits = [
        (c, m)
        for c, m in rows
        if c != BASELINE
        and m.get("accuracy_kept") is not None
        and m.get("visual_share", 1.0) <= share + 0.005
    ]
    if not fits:
        return None
    c, m = max(fits, key=lambda cm: (cm[1]["accuracy_kept"], cm[1]["ttft_speedup"]))
    line = (
        f"best at <= {share:.0%} of the visual tokens: {label(c)} keeps {m['accuracy_kept']:.1f}% "
        f"of the full model's accuracy ({m['accuracy']:.1f}%, {m['accuracy_delta']:+.1f}) with "
        f"{m['visual_tokens']:.1f} visual tokens per image, "
        f"{speedup_text(m, 'ttft_speedup', TTFT_NOISY)} time to first token"
    )
    if share == TARGET_SHARE:
        met = m["accuracy_kept"] >= KEPT_TARGET and m["ttft_speedup"] >= TTFT_TARGET
        line += (
            f"; target >= {KEPT_TARGET:.0f}% kept with >= {TTFT_TARGET}x: "
            f"{'met' if met else 'missed'}"
        )
    return line


def uniform_twin(config: str) -> str | None:
    """The configuration of ``config``'s method at the same parameters with a uniform budget,
    or None when ``config`` has no adaptive budget (or names a method this version lacks)."""
    try:
        method = methods.build(config)
    except (ValueError, TypeError):
        return None
    if getattr(method, "adaptive", None) is None:
        return None
    return methods.describe(dataclasses.replace(method, adaptive=None, adaptive_k=None))


def adaptive_vs_uniform(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per adaptive row whose uniform twin (:func:`uniform_twin`) was measured too:
    accuracy and mean visual tokens of both, so equal cost is visible."""
    measured = dict(rows)
    lines = []
    for config, m in rows:
        twin = uniform_twin(config) if config != BASELINE else None
        u = measured.get(twin) if twin else None
        if u is None or m.get("accuracy") is None or u.get("accuracy") is None:
            continue
        lines.append(
            f"{label(config)}: {m['accuracy']:.1f}% against {u['accuracy']:.1f}% uniform "
            f"({m['accuracy'] - u['accuracy']:+.1f}), {m['visual_tokens']:.1f} against "
            f"{u['visual_tokens']:.1f} visual tokens per image (sd "
            f"{m.get('visual_tokens_sd', 0.0):.1f} against {u.get('visual_tokens_sd', 0.0):.1f})"
        )
    return lines


def last_kept(handle: Any) -> torch.Tensor | None:
    """(B, M) prompt token indices the language model ran on after the last site of the last
    prefill (``handle.trace.prefill_kept``), or None when nothing was removed."""
    kept = getattr(handle.trace, "prefill_kept", None)
    return kept[-1] if kept else None


def _image_state(
    state: TokenState | None, image: int, kept: torch.Tensor, grid: tuple[int, int]
) -> tuple[TokenState, int]:
    """``(state, num_prefix)`` to draw one image over its patch ``grid``: the handoff's own
    token state of ``image`` when it records the reduction (merged groups shown), else one built
    from its ``kept`` (N,) bool image tokens; the prefix is what the image's N tokens hold
    beyond the grid (a class token handed over)."""
    n = kept.numel()
    recorded = (
        state is not None
        and state.num_original == n
        and (state.merged or bool((state.source[image] < 0).any()))
    )
    if recorded:
        parts = (t[image : image + 1] for t in (state.size, state.source, state.position))
        one = TokenState(*parts, state.protected[image : image + 1], merged=state.merged)
    else:
        one = patch_state(kept)
    return one, n - grid[0] * grid[1]


def _digest(questions: Any) -> str:
    """A content hash of the questions, answers and the images they are about."""
    h = hashlib.sha256()
    for text, answer, qtype in zip(
        questions.questions, questions.answers, questions.qtypes, strict=True
    ):
        h.update(f"{text}|{answer}|{qtype};".encode())
    used = np.unique(questions.image_index)
    h.update(np.ascontiguousarray(questions.images[used]).tobytes())
    h.update(questions.image_index.astype(np.int64).tobytes())
    return h.hexdigest()[:12]


__all__ = [
    "KEEP_SHARES",
    "SPLITS",
    "VisualQuestionAnswering",
    "accuracy_by_type",
    "adaptive_vs_uniform",
    "keep_share_sweep",
    "kept_image_tokens",
    "last_kept",
    "load_questions",
    "patch_state",
    "uniform_twin",
]
