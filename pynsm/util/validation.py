"""The pynsm 1.0.1 import path ``pynsm.util.validation``."""

from pynsm.eval import extract_embeddings

__all__ = ["extract_embeddings"]
