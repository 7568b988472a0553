"""Token reduction in training: a patched model fine-tuned with its reduction in the loop.

:func:`finetune` trains a vision classifier patched with a token method (``tome``, ``evit``,
...), so that the weights adapt to the reduced sequence the method leaves (ToMe and EViT
report their best accuracy/speed trade-offs after such fine-tuning). The command line:

    python -m tokenreduce.train finetune --model fmnist-vit --method "tome:r=16" \
        --epochs 1 --out runs/ft-tome-r16

Gradients in training mode (:mod:`tokenreduce.train.gradients`): a reduction is a gather
(pruning) or a weighted average (merging) of the hidden states, both differentiable with
respect to the token values, so every token method trains the model through the tokens it
keeps or merges; the discrete choice of which tokens survive gets no gradient.
"""

from .gradients import GRADIENT_PATHS, check_trainable, token_methods
from .recipe import FinetuneError, finetune

__all__ = ["GRADIENT_PATHS", "FinetuneError", "check_trainable", "finetune", "token_methods"]
