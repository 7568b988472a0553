"""Which gradients a token method passes in training mode, and which methods can train.

A reduction (:class:`~tokenreduce.core.reduction.Reduction`) is applied as a gather of the
kept tokens or a weighted average of the tokens sharing a slot. Both are differentiable with
respect to the hidden states, so the loss reaches every parameter below a reduction site
through the surviving tokens. Which tokens survive is an argmax/top-k: a discrete choice
with no gradient. Where a method's choice is computed from the model's own attention or keys
(EViT, ToMe), fine-tuning still changes it indirectly, because the parameters that produce
the scores are trained through the kept tokens; where a merge is weighted by a score (EViT's
fused token), that score receives a gradient too. None of the registered methods has
parameters of its own, so none needs a straight-through or Gumbel-softmax estimator; a
method with a learned selector (DynamicViT) defines its own.
"""

from __future__ import annotations

from .. import methods
from ..methods.base import InvalidParameter, Method

#: the method kinds that reduce a hidden-state sequence inside the model
TOKEN_KINDS = ("tokens", "tokens_per_input")

_PRUNE = "gather of the kept tokens (values get gradients, the top-k choice does not)"

#: method name -> what carries the gradient in training mode
GRADIENT_PATHS: dict[str, str] = {
    "tome": "weighted average of merged tokens (sizes as weights); the bipartite matching "
    "is discrete",
    "evit": _PRUNE + "; the fused token averages the pruned ones weighted by class attention, "
    "so that attention (q, k of the site's block) gets a gradient",
    "prunemerge": _PRUNE + "; the merged leftovers are weighted averages",
    "prumerge": "weighted average of each kept token and the pruned ones merged into it",
    "prumerge_plus": "weighted average of each kept token and the pruned ones merged into it",
    "pool": "average of the tokens in each pooling cell",
    "downsample": "average of the tokens in each downsampling cell",
    "visionzip": _PRUNE + "; the contextual tokens are weighted averages",
}


def gradient_path(name: str) -> str:
    """What carries the gradient through method ``name`` (a plain gather unless listed)."""
    return GRADIENT_PATHS.get(name, _PRUNE)


def token_methods() -> list[str]:
    """Registered methods that reduce the token sequence inside a model (kinds
    ``"tokens"`` and ``"tokens_per_input"``): those :func:`~tokenreduce.train.finetune` takes."""
    return [n for n in methods.available() if methods.get(n).kind in TOKEN_KINDS]


def check_trainable(method: Method | str) -> Method:
    """The method built from ``method`` (an instance or a spec such as ``"tome:r=16"``).

    Raises:
        InvalidParameter: the spec is malformed, or the method is not a token method (a
            KV-cache, prefill, prompt or local method has nothing to fine-tune a vision
            model with); the message lists the token methods.
    """
    built = methods.build(method)
    if built.kind not in TOKEN_KINDS:
        raise InvalidParameter(
            f"{built.name} is a {built.kind!r} method; fine-tuning takes a token method "
            f"(kind {' or '.join(repr(k) for k in TOKEN_KINDS)}): {', '.join(token_methods())}"
        )
    return built
