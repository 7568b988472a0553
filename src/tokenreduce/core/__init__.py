"""Pure tensor functions: token state, scorers, reducers, budgets. No model knowledge."""

from .budgets import Budget, ConstantR, KeepRatio, PerLayer, tome_schedule
from .context import ModelInfo, TokenContext
from .reducers import bipartite_merge, grid_pool, topk_fuse, topk_prune
from .reduction import Reduction
from .scorers import attention_received, cosine_similarity, key_norm, random_scores
from .state import TokenState

__all__ = [
    "Budget", "ConstantR", "KeepRatio", "PerLayer", "tome_schedule", "ModelInfo", "TokenContext",
    "bipartite_merge", "grid_pool", "topk_fuse", "topk_prune", "Reduction",
    "attention_received", "cosine_similarity", "key_norm", "random_scores", "TokenState",
]
