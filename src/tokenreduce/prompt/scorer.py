"""The scorer of prompt compression: a causal language model that reads text and says how
surprising each token is.

The self-information of token ``x_t`` is ``-log p(x_t | x_<t)`` in nats: low for a token the
model predicts (removable), high for one it does not. :class:`Scorer` computes it for many
texts in padded batches; :class:`Stream` reads one prompt segment by segment with the KV
cache of what has been kept so far, the conditioning of LLMLingua's iterative compression.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..adapters.hf_decoder.calls import cache_kwargs, output_cache
from . import units

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class Text:
    """A tokenised text: ``ids`` (n,) int64 without special tokens, and its word
    :class:`~tokenreduce.prompt.units.Groups`."""

    text: str
    ids: torch.Tensor
    groups: units.Groups

    def __len__(self) -> int:
        return len(self.ids)


def check_causal_lm(model: nn.Module, tokenizer) -> None:
    """Raise TypeError unless ``model`` is a Hugging Face causal LM (a ``...ForCausalLM``
    class) and ``tokenizer`` a fast tokenizer (character offsets are needed to keep words
    whole)."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if not name.endswith(_CAUSAL_SUFFIXES) or getattr(config, "is_encoder_decoder", False):
        raise TypeError(
            f"the prompt scorer must be a Hugging Face causal language model (a ...ForCausalLM "
            f"class such as LlamaForCausalLM); got {name}"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the prompt scorer needs a fast tokenizer (character offsets); got "
            f"{type(tokenizer).__name__}"
        )


class Scorer:
    """A causal LM and its tokenizer, scoring texts in batches of ``batch_size``.

    Args:
        model: a Hugging Face causal LM (``AutoModelForCausalLM``); put in eval mode.
        tokenizer: its fast tokenizer.
        batch_size: texts per forward pass.

    Raises:
        TypeError: the model is not a causal LM or the tokenizer is not a fast one.
    """

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = 8):
        check_causal_lm(model, tokenizer)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        start = tokenizer.bos_token_id
        self.start_id = tokenizer.eos_token_id if start is None else start
        if self.start_id is None:
            raise TypeError("the scorer's tokenizer has neither a BOS nor an EOS token")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, text: str) -> Text:
        """``text`` as token ids with its word groups."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        return Text(text, ids, units.groups(text, offsets))

    def count(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def self_information(
        self, texts: Sequence[torch.Tensor], prefixes: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """``-log p(x_t | prefix, x_<t)`` in nats for every token of every text.

        Args:
            texts: token ids, each (n_i,).
            prefixes: token ids each text is conditioned on, each (p_i,); None or empty for
                none (the text is then read after the tokenizer's BOS, or EOS, token).

        Returns:
            One float32 tensor (n_i,) per text, on the CPU.
        """
        prefixes = list(prefixes) if prefixes is not None else [None] * len(texts)
        if len(prefixes) != len(texts):
            raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} texts")
        rows = [self._row(t, p) for t, p in zip(texts, prefixes, strict=True)]
        # rows of similar length share a batch, so little of a forward pass reads padding
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        out: list[torch.Tensor | None] = [None] * len(rows)
        for i in range(0, len(order), self.batch_size):
            chunk = order[i : i + self.batch_size]
            for j, info in zip(chunk, self._batch([rows[j] for j in chunk]), strict=True):
                out[j] = info
        return out

    def _row(self, text: torch.Tensor, prefix: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """The ids a forward reads (start token, prefix, text) and where the text begins."""
        head = torch.tensor([self.start_id]) if prefix is None or not len(prefix) else prefix
        return torch.cat([head.long(), text.long()]), len(head)

    def _batch(self, rows: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Self-information of the text part of each row, one right-padded forward."""
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, (row, _) in enumerate(rows):
            ids[b, : len(row)] = row
            mask[b, : len(row)] = 1
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).logits.float()
        info = _next_token_information(logits, ids.to(self.device)).cpu()
        return [info[b, start - 1 : len(row) - 1] for b, (row, start) in enumerate(rows)]


def _next_token_information(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L-1): ``-log p(ids[:, t+1] | ids[:, :t+1])`` from ``logits`` (B, L, V)."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None])[..., 0]


class Stream:
    """One prompt read segment by segment: each segment is scored given everything kept
    before it (``prefix``, then the kept tokens of earlier segments), through the KV cache.

    ``score(ids)`` reads a segment; ``keep(chosen)`` then keeps the chosen tokens of it, so
    the next segment is conditioned on the compressed text, as in LLMLingua's iterative
    token-level compression. As in the authors' implementation, the kept tokens' cache
    entries are those of the segment's own forward pass, only the removed tokens' entries
    are dropped (one forward pass per segment; the kept entries were computed with the
    removed tokens in view). A model whose cache has sliding-window layers (Gemma-3) cannot
    drop entries in place: there the cache before the segment is restored and the kept
    tokens are read again.
    """

    def __init__(self, scorer: Scorer, prefix: torch.Tensor | None = None):
        self.scorer = scorer
        head = prefix if prefix is not None and len(prefix) else torch.tensor([scorer.start_id])
        self.cache = None
        self.length = 0  # entries held for the kept text
        self.last_logits: torch.Tensor | None = None
        self._segment: tuple[torch.Tensor, torch.Tensor] | None = None  # ids, logits
        self._before = None
        self._read(head.long())

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        model = self.scorer.model
        cache = {} if self.cache is None else cache_kwargs(model, self.cache)
        out = model(input_ids=ids[None].to(self.scorer.device), **cache, use_cache=True)
        self.cache = output_cache(out)
        return out.logits[0].float()

    def _read(self, ids: torch.Tensor) -> None:
        if len(ids):
            self.last_logits = self._forward(ids)[-1]
            self.length += len(ids)

    def _in_place(self) -> bool:
        layers = getattr(self.cache, "layers", None)
        return layers is not None and not any(getattr(x, "is_sliding", False) for x in layers)

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """(n,) self-information in nats of the segment ``ids`` (n,) given what is kept."""
        if not len(ids):
            return torch.zeros(0)
        # a cache that cannot drop entries in place is restored to this copy by keep()
        self._before = None if self._in_place() else copy.deepcopy(self.cache)
        logits = self._forward(ids)
        self._segment = (ids, logits)
        shifted = torch.cat([self.last_logits[None], logits[:-1]])
        logp = torch.log_softmax(shifted, dim=-1)
        return (-logp.gather(-1, ids.to(logp.device)[:, None])[:, 0]).cpu()

    def keep(self, chosen: torch.Tensor) -> None:
        """Keep the tokens ``chosen`` ((n,) bool) of the segment scored last."""
        if self._segment is None:
            raise RuntimeError("Stream.keep without a scored segment")
        (ids, logits), self._segment = self._segment, None
        chosen = chosen.to(torch.bool).cpu()
        if self._before is not None:
            self.cache, self._before = self._before, None
            self._read(ids[chosen])
            return
        index = torch.cat([torch.arange(self.length), self.length + torch.nonzero(chosen)[:, 0]])
        for layer in self.cache.layers:
            at = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, at)
            layer.values = layer.values.index_select(-2, at)
        self.length = len(index)
        if chosen.any():
            self.last_logits = logits[int(torch.nonzero(chosen)[:, 0][-1])]
