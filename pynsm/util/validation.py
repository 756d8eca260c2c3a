"""The pynsm 1.0.1 import path ``pynsm.util.validation``.

Example:
    >>> import pynsm.eval
    >>> from pynsm.util.validation import extract_embeddings
    >>> extract_embeddings is pynsm.eval.extract_embeddings
    True
"""

from pynsm.eval import extract_embeddings

__all__ = ["extract_embeddings"]
