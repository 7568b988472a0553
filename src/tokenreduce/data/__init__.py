"""Offline data loaders for benchmarks and demos."""

from .fashion_mnist import LABELS, DataNotFoundError, fashion_mnist, find_fashion_mnist, preprocess

__all__ = ["LABELS", "DataNotFoundError", "fashion_mnist", "find_fashion_mnist", "preprocess"]
