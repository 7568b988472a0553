"""tokenreduce: token reduction for transformers.

>>> import timm, tokenreduce
>>> model = timm.create_model("vit_small_patch16_224")
>>> with tokenreduce.patch(model, "tome:r=13"):
...     logits = model(images)
"""

from . import lm, methods, prompt, text
from .adapters import ReductionNotApplied
from .api import Handle, describe, handle_of, patch, unpatch

__version__ = "0.1.0"
__all__ = [
    "Handle",
    "ReductionNotApplied",
    "describe",
    "handle_of",
    "lm",
    "methods",
    "patch",
    "prompt",
    "text",
    "unpatch",
    "__version__",
]
