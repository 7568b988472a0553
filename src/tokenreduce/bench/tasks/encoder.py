"""Text-encoder tasks on WordNet noun synsets: ``sentence-fidelity``, ``retrieval`` and
``text-probe``, each with the cost of the reduction on inputs of 128 tokens.

Data (:mod:`tokenreduce.data.wordnet`, Debian's ``wordnet-base``; drawn with a seed, so every
run sees the same texts):

* ``sentence-fidelity``: passages of exactly 128 tokens ([CLS], 126 text tokens, [SEP]):
  definitions of randomly drawn synsets joined by spaces and truncated to 128 tokens. Metric:
  cosine of the reduced model's sentence embedding to the unreduced one's, mean and minimum;
* ``retrieval``: a synset's words (``"dog, domestic dog, Canis familiaris"``) are the query,
  its definition the document to find among all the documents. Queries and documents are both
  embedded by the reduced model, as when the reduced encoder replaces the full one for the
  whole index; recall@1 and recall@5 by cosine, and recall@1 over the unreduced model's;
* ``text-probe``: definitions labelled with their lexicographer category (``noun.animal``,
  ``noun.food``, ``noun.person``, ... ten categories, the same number of each). A linear
  head (multinomial logistic regression, L-BFGS) is trained on the unreduced model's
  embeddings of a training split, then classifies the reduced model's embeddings of a
  held-out split; accuracy, and accuracy kept (over the unreduced model's).

A sentence embedding is the mean of the last hidden states weighted by how many original
tokens each one stands for (:func:`tokenreduce.text.mean_pool` with the handle), so a merged
token counts its members and a padding slot nothing. Short texts go in right-padded batches
(each sample reduced on its own real tokens); every row records the share of its texts' tokens
left after the last layer (budgets that count tokens, such as ToMe's ``r``, remove a larger
share of a short text). Cost, on one batch of 128-token passages with no padding: analytic
GFLOPs per input and FLOP ratio, throughput and its paired ratio to the unreduced model timed
interleaved in the same run (median of the per-pair ratios, timed again while they are too
noisy and flagged if they stay so; 1 for the baseline), peak tensor memory and the mean
tokens per layer.

Default budgets are matched (:mod:`tokenreduce.bench.matched`) on the 126 reducible tokens of
a 128-token input: 25 / 50 / 75 % of them removed by ToMe, top-K and random pruning at the
same layers; PoWER-BERT and LTP run their own sweeps (a keep ratio after the last layer, a
score threshold).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ...data import wordnet
from ...text import mean_pool
from ..configs import BASELINE
from ..measure import NOISY, Steps, check_ints, cost_metrics, fraction, reduced_model, until_steady
from ..metrics import paired_times, peak_memory_mb
from . import Column, Metrics, Options, Plot, Task, register

#: tokens of a passage and of the timed inputs ([CLS] and [SEP] included); ``--context``
#: sets another
INPUT_TOKENS = 128
#: the issue's target: embedding cosine and probe accuracy kept at this throughput ratio
TARGET_COS, TARGET_KEPT, TARGET_SPEEDUP = 0.98, 0.99, 1.5
PROBE_CATEGORIES = tuple(f"noun.{c}" for c in (
    "act", "animal", "artifact", "body", "food", "location", "person", "plant", "substance", "time"
))  # fmt: skip
SEED = 0
THROUGHPUT = "throughput (inputs/s of 128 tokens: baseline × paired speedup)"

#: the columns every encoder task shows after its quality columns: the share of its texts'
#: tokens left after the last layer, then the cost on the timed inputs
COST_COLUMNS = (
    Column("tokens_left", "text tokens left %", ".1f", False),
    Column("gflops", "GFLOPs", ".3g", False),
    Column("flop_ratio", "FLOP ×", ".2f", True),
    Column("throughput_scaled", "inputs/s (baseline × speedup)", ".1f", True, flag=NOISY),
    Column("speedup", "throughput ×", ".2f", True, flag=NOISY),
    Column("mean_tokens", "mean tokens (timed)", ".1f", False),
    Column("peak_mem_mb", "peak MiB", ".1f", False),
)

Batch = dict[str, torch.Tensor]


# -- texts to model inputs ---------------------------------------------------------------------
def encode(tokenizer: Any, texts: Sequence[str], batch_size: int, max_tokens: int) -> list[Batch]:
    """``texts`` tokenized in right-padded batches of ``batch_size`` (``input_ids`` and
    ``attention_mask``, (B, N) each), truncated to ``max_tokens`` ([CLS] and [SEP] included)."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt", padding_side="right")  # fmt: skip
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def passages(
    synsets: Sequence[wordnet.Synset], tokenizer: Any, tokens: int, count: int, seed: int
) -> list[str]:
    """``count`` texts of at least ``tokens`` tokens (with [CLS] and [SEP]): definitions of
    synsets drawn with ``seed``, joined by spaces; :func:`encode` truncates them to ``tokens``."""
    rng = random.Random(f"passages:{seed}")
    out = []
    for _ in range(count):
        parts: list[str] = []
        while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
            parts += [rng.choice(synsets).definition + "." for _ in range(4)]
        out.append(" ".join(parts))
    return out


class Embedded(NamedTuple):
    """Sentence embeddings ``vectors`` (N, C) of N texts, and the ``tokens`` (N,) each text
    has left after the last layer."""

    vectors: torch.Tensor
    tokens: torch.Tensor


def embed(
    model: nn.Module, handle: Any, batches: list[Batch], step: Callable[[], None]
) -> Embedded:
    """The sentence embeddings of ``batches`` through ``model``: the mean of the last hidden
    states weighted by token size (``handle``'s state; the attention mask when ``handle`` is
    None), and the tokens left. ``step`` is called after each batch."""
    vectors, tokens = [], []
    with torch.inference_mode():
        for batch in batches:
            hidden = model(**batch).last_hidden_state
            mask = None if handle is not None else batch["attention_mask"]
            vectors.append(mean_pool(hidden, handle, attention_mask=mask).float())
            weight = batch["attention_mask"] if handle is None else handle.state.size
            tokens.append((weight > 0).sum(1))  # a padding slot stands for no token
            step()
    return Embedded(torch.cat(vectors), torch.cat(tokens))


def batches_hash(*groups: list[Batch]) -> str:
    """A short SHA-256 of the token ids of every batch (the data part of a data id)."""
    h = hashlib.sha256()
    for batches in groups:
        for b in batches:
            h.update(b["input_ids"].contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def input_tokens(model: nn.Module, context: Sequence[int]) -> int:
    """The passage length ``--context`` asks for (one value; default 128), checked against
    the model's position embeddings."""
    if len(context) > 1:
        raise ValueError(
            f"the text-encoder tasks take one --context (tokens per input), got {list(context)}"
        )
    tokens = context[0] if context else INPUT_TOKENS
    most = getattr(model.config, "max_position_embeddings", tokens)
    if not 8 <= tokens <= most:
        raise ValueError(
            f"--context {tokens}: a text encoder's inputs must be 8 to {most} tokens (its "
            "position embeddings)"
        )
    return tokens


# -- the shared task ---------------------------------------------------------------------------
class EncoderTask(Task):
    """Base of the text-encoder tasks: the texts each configuration embeds (:attr:`batches`),
    its own metrics of them (:meth:`quality`), and the shared cost on ``timed``.

    Args:
        tokenizer: the model's tokenizer.
        timed: the timed inputs: ``input_ids`` (B, T) of passages without padding.
        data_name: what the texts are; the data id adds the counts and a content hash.
        batch_size: texts embedded at once (the timed batch has its own size, B).
        threads, repeats, warmup: torch threads (recorded), timed and untimed calls per side.
    """

    model_kind = "encoder"
    method_kinds = ("tokens", "tokens_per_input")

    def __init__(
        self,
        tokenizer: Any,
        timed: torch.Tensor,
        data_name: str,
        *,
        batch_size: int = 16,
        threads: int = 1,
        repeats: int = 5,
        warmup: int = 1,
    ) -> None:
        check_ints(("batch_size", batch_size, 1), ("repeats", repeats, 1),
                   ("warmup", warmup, 0), ("threads", threads, 1))  # fmt: skip
        if timed.dim() != 2 or timed.dtype != torch.long or len(timed) == 0:
            raise ValueError(
                f"timed inputs must be token ids (B, T) with B >= 1, got {timed.dtype} "
                f"{tuple(timed.shape)}"
            )
        self.tokenizer, self.timed, self.data_name = tokenizer, timed, data_name
        self.batch_size, self.threads = batch_size, threads
        self.repeats, self.warmup = repeats, warmup
        self.batches: list[Batch] = []
        self._prepared = False

    @property
    def data_id(self) -> str:
        texts = sum(len(b["input_ids"]) for b in self.batches)
        digest = batches_hash(self.batches, [{"input_ids": self.timed}])
        return f"{self.data_name}[{texts}]:timed={tuple(self.timed.shape)}#{digest}"

    @classmethod
    def default_sweep(cls, loaded: Any):
        """Matched budgets on the reducible tokens of a 128-token input."""
        from ..matched import sweep_for

        return sweep_for(INPUT_TOKENS - 2)

    @classmethod
    def from_options(cls, loaded: Any, options: Options) -> EncoderTask:
        """WordNet from ``options.data`` (the folder holding ``data.noun``; default
        ``$TOKENREDUCE_WORDNET``, then ``/usr/share/wordnet``), inputs of ``options.context``
        tokens (default 128), batches of 16 (also the timed batch of passages), 5 timed
        repeats after 1 warm-up, seed 0; ``quick``: fewer texts (see each task), 3 repeats."""
        if loaded.kind != "encoder" or loaded.tokenizer is None:
            raise ValueError(
                f"task {cls.name!r} needs a text encoder with its tokenizer; {loaded.name} is "
                "not one"
            )
        tokens = input_tokens(loaded.model, options.context)
        synsets = wordnet.noun_synsets(options.data)
        batch = options.batch_size or 16
        timed = encode(
            loaded.tokenizer,
            passages(synsets, loaded.tokenizer, tokens, batch, SEED + 1),
            batch,
            tokens,
        )[0]
        task = cls(
            loaded.tokenizer,
            timed["input_ids"],
            f"{cls.name}:wordnet-3.0:seed={SEED}:tokens={tokens}",
            batch_size=batch,
            threads=options.threads,
            repeats=options.repeats or (3 if options.quick else 5),
            warmup=options.warmup if options.warmup is not None else 1,
        )
        task.load(synsets, tokens, options)
        task.check_model(loaded.model)
        return task

    def load(self, synsets: list[wordnet.Synset], tokens: int, options: Options) -> None:
        """Draw the task's texts from ``synsets`` into :attr:`batches` (``options.limit``
        and ``options.quick`` size them; texts of at most ``tokens`` tokens)."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        vocab = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model embeds only "
                f"{vocab}: they do not belong together"
            )
        input_tokens(model, (self.timed.shape[1],))

    def steps(self, config: str) -> int:
        # preparation, embedded batches, timing, memory
        return (0 if self._prepared else self.prepare_steps()) + len(self.batches) + 2

    def prepare_steps(self) -> int:
        """Progress steps of :meth:`prepare` (done once)."""
        return len(self.batches)

    def prepare(self, model: nn.Module, step: Callable[[], None]) -> None:
        """What the metrics need once, from the unreduced ``model``, calling ``step``
        :meth:`prepare_steps` times: the reference embeddings of :attr:`batches`."""
        if not self._prepared:
            self.reference = embed(model, None, self.batches, step).vectors
            self._prepared = True

    def quality(self, embeddings: torch.Tensor, baseline: Metrics | None) -> Metrics:
        """The task's own metrics of the reduced model's ``embeddings`` of :attr:`batches`."""
        raise NotImplementedError

    def run(self, model: nn.Module, config: str, baseline: Metrics | None, step: Steps) -> Metrics:
        self.prepare(model, step)
        with reduced_model(model, config) as (reduced, handle):
            embedded = embed(reduced, handle, self.batches, step)
            values = self.quality(embedded.vectors, baseline)
            values.update(self._cost(model, reduced, handle, config == BASELINE, baseline, step))
        real = torch.cat([b["attention_mask"].sum(1) for b in self.batches])
        values["tokens_left"] = 100.0 * float((embedded.tokens / real).mean())
        values.update(texts=len(self.reference), input_tokens=self.timed.shape[1],
                      repeats=self.repeats, warmup=self.warmup)  # fmt: skip
        return values

    def _cost(self, model, reduced, handle, is_baseline: bool, baseline, step: Steps) -> Metrics:
        """The shared cost metrics (:func:`~tokenreduce.bench.measure.cost_metrics`) of the
        timed inputs; the baseline's are the plain model's times (speedup 1)."""
        x = self.timed
        with torch.inference_mode():
            reduced(x)  # its trace gives the GFLOPs and tokens of one timed input
        gflops, tokens = handle.gflops(), handle.trace.attn_tokens
        plain, other = (lambda: model(x)), (lambda: (model if is_baseline else reduced)(x))

        def time_once() -> tuple[list[float], list[float]]:
            with torch.inference_mode():
                t_base, t_other = paired_times(plain, other, self.repeats, self.warmup)
            return (t_base, t_base) if is_baseline else (t_base, t_other)

        (t_base, t_red), attempts = until_steady(time_once, lambda t: t)
        step()
        with torch.inference_mode():
            peak = peak_memory_mb(other)
        step()
        return cost_metrics(
            gflops=gflops, base_gflops=handle.baseline_gflops(),
            mean_tokens=sum(tokens) / len(tokens), t_base=t_base, t_red=t_red,
            batch=len(x), peak=peak, baseline=baseline, attempts=attempts,
        )  # fmt: skip

    @classmethod
    def fastest(
        cls, rows: list[tuple[str, Metrics]], key: str, least: float, what: str
    ) -> list[str]:
        """A summary line: the fastest configuration whose ``key`` is at least ``least``,
        against the throughput target."""
        from ..configs import label
        from ..measure import speedup_text

        ok = [(c, m) for c, m in rows if c != BASELINE and (m.get(key) or -1.0) >= least]
        if not ok:
            return [f"no configuration keeps {what} >= {least}"]
        config, m = max(ok, key=lambda cm: cm[1]["speedup"])
        met = "met" if m["speedup"] >= TARGET_SPEEDUP else "not met"
        return [
            f"fastest with {what} >= {least}: {label(config)}: {speedup_text(m)} throughput on "
            f"{m.get('input_tokens', INPUT_TOKENS)}-token inputs (target {TARGET_SPEEDUP}x: "
            f"{met}), {what} {m[key]:.4f}, {m['flop_ratio']:.2f}x fewer FLOPs"
        ]


def pareto_plots(y: str, y_label: str) -> tuple[Plot, Plot]:
    """An encoder task's Pareto plots of metric ``y``: against throughput and GFLOPs."""
    return (
        Plot("throughput_scaled", y, THROUGHPUT, y_label),
        Plot("gflops", y, "GFLOPs per 128-token input", y_label, x_higher_is_better=False),
    )


# -- the tasks ---------------------------------------------------------------------------------
@register
class SentenceFidelity(EncoderTask):
    """Cosine of a reduced encoder's sentence embeddings of 128-token passages to the
    unreduced encoder's (64 passages; ``quick``: 16; ``limit``: the first N)."""

    name = "sentence-fidelity"
    description = (
        "sentence-embedding cosine to the unreduced encoder on 128-token WordNet passages, "
        "against throughput (text encoders)"
    )
    columns = (
        Column("cos", "embedding cos", ".4f", True),
        Column("cos_min", "cos min", ".4f", True),
        *COST_COLUMNS,
    )
    plots = pareto_plots("cos", "sentence-embedding cosine to unreduced")

    def load(self, synsets, tokens, options):
        count = options.limit or (16 if options.quick else 64)
        texts = passages(synsets, self.tokenizer, tokens, count, SEED)
        self.batches = encode(self.tokenizer, texts, self.batch_size, tokens)

    def quality(self, embeddings, baseline):
        cos = torch.cosine_similarity(embeddings, self.reference, dim=-1)
        return {"cos": float(cos.mean()), "cos_min": float(cos.min())}

    @classmethod
    def summary(cls, rows):
        """The fastest configuration with embedding cosine >= 0.98, against 1.5x."""
        return cls.fastest(rows, "cos", TARGET_COS, "embedding cosine")


@register
class Retrieval(EncoderTask):
    """Find each synset's definition from its words: recall@1 and @5 over all definitions,
    queries and documents both embedded by the reduced encoder (500 synsets with distinct
    word lists of two words or more; ``quick``: 32; ``limit``: N)."""

    name = "retrieval"
    description = (
        "recall@1/@5 of WordNet definitions from their words, both sides embedded by the "
        "reduced encoder, against throughput (text encoders)"
    )
    columns = (
        Column("recall_at_1", "recall@1", ".3f", True),
        Column("recall_at_5", "recall@5", ".3f", True),
        Column("recall_kept", "recall@1 kept", ".3f", True),
        *COST_COLUMNS,
    )
    plots = pareto_plots("recall_at_1", "recall@1")

    def load(self, synsets, tokens, options):
        chosen = wordnet.distinct_words(
            synsets, options.limit or (32 if options.quick else 500), SEED
        )
        self.queries = [", ".join(s.lemmas) for s in chosen]
        documents = [s.definition for s in chosen]
        self.batches = encode(self.tokenizer, self.queries + documents, self.batch_size, tokens)

    def recall(self, embeddings: torch.Tensor) -> tuple[float, float]:
        """(recall@1, recall@5) of the queries' (the first half) cosine to the documents."""
        n = len(self.queries)
        q, d = (torch.nn.functional.normalize(e, dim=-1) for e in (embeddings[:n], embeddings[n:]))
        sim = q @ d.T
        rank = (sim > sim.diagonal()[:, None]).sum(1)  # documents scoring above the right one
        return float((rank < 1).float().mean()), float((rank < 5).float().mean())

    def quality(self, embeddings, baseline):
        r1, r5 = self.recall(embeddings)
        return {
            "recall_at_1": r1,
            "recall_at_5": r5,
            "recall_kept": fraction(r1, self.recall(self.reference)[0]),
        }

    @classmethod
    def summary(cls, rows):
        """The fastest configuration keeping 99% of the unreduced recall@1, against 1.5x."""
        return cls.fastest(rows, "recall_kept", TARGET_KEPT, "recall@1 kept")


@register
class TextProbe(EncoderTask):
    """A linear probe of WordNet lexicographer categories: trained on the unreduced
    encoder's embeddings of 64 definitions per category, it classifies the reduced encoder's
    embeddings of 32 held-out ones per category (``quick``: 16 and 8; ``limit``: N held out
    in all, twice as many for training)."""

    name = "text-probe"
    description = (
        "accuracy of a linear probe (WordNet noun categories, trained on unreduced "
        "embeddings) on reduced embeddings, against throughput (text encoders)"
    )
    columns = (
        Column("probe_acc", "probe accuracy %", ".2f", True),
        Column("probe_kept", "accuracy kept", ".4f", True),
        *COST_COLUMNS,
    )
    plots = pareto_plots("probe_kept", "probe accuracy kept")

    def load(self, synsets, tokens, options):
        k = len(PROBE_CATEGORIES)
        held = -(-options.limit // k) if options.limit else (8 if options.quick else 32)
        chosen = wordnet.sample_by_category(synsets, PROBE_CATEGORIES, 3 * held, SEED)
        labels = torch.arange(k).repeat_interleave(3 * held).view(k, 3 * held)
        train = [i for i in range(len(chosen)) if i % (3 * held) < 2 * held]
        test = [i for i in range(len(chosen)) if i % (3 * held) >= 2 * held]
        texts = [s.definition for s in chosen]
        self.train_labels, self.labels = labels.flatten()[train], labels.flatten()[test]
        self.train_batches = encode(
            self.tokenizer, [texts[i] for i in train], self.batch_size, tokens
        )
        self.batches = encode(self.tokenizer, [texts[i] for i in test], self.batch_size, tokens)

    def prepare_steps(self) -> int:
        return len(self.train_batches) + len(self.batches)

    def prepare(self, model, step):
        """The probe, trained on the unreduced embeddings of the training split, and its
        accuracy on the unreduced embeddings of the held-out split."""
        if not self._prepared:
            self.probe = LinearProbe.fit(
                embed(model, None, self.train_batches, step).vectors, self.train_labels
            )
            super().prepare(model, step)
            self.reference_acc = self.probe.accuracy(self.reference, self.labels)

    def quality(self, embeddings, baseline):
        acc = self.probe.accuracy(embeddings, self.labels)
        return {"probe_acc": 100.0 * acc, "probe_kept": fraction(acc, self.reference_acc)}

    @classmethod
    def summary(cls, rows):
        """The fastest configuration keeping 99% of the probe's accuracy, against 1.5x."""
        return cls.fastest(rows, "probe_kept", TARGET_KEPT, "probe accuracy kept")


class LinearProbe:
    """Multinomial logistic regression on standardised embeddings, fitted by L-BFGS from
    zero weights (deterministic; a fraction of a second for a few thousand embeddings)."""

    def __init__(self, head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.head, self.mean, self.std = head, mean, std

    @classmethod
    def fit(
        cls, features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, iters: int = 200
    ) -> LinearProbe:
        """A probe of ``features`` (N, C) with int ``labels`` (N,); ``l2`` weighs the squared
        weights in the loss."""
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        head = nn.Linear(features.shape[1], int(labels.max()) + 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        x = (features - mean) / std
        opt = torch.optim.LBFGS(head.parameters(), max_iter=iters, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            value = nn.functional.cross_entropy(head(x), labels) + l2 * head.weight.square().sum()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(loss)
        return cls(head, mean, std)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``features`` (N, C) classified as ``labels`` (N,)."""
        with torch.no_grad():
            predicted = self.head((features - self.mean) / self.std).argmax(-1)
        return float((predicted == labels).float().mean())


__all__ = [
    "EncoderTask",
    "LinearProbe",
    "Retrieval",
    "SentenceFidelity",
    "TextProbe",
    "encode",
    "passages",
]
