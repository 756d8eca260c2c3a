"""The pynsm 1.0.1 import path: ``from pynsm.util import extract_embeddings``."""

from pynsm.eval import extract_embeddings

__all__ = ["extract_embeddings"]
