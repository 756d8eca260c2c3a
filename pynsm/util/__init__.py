"""The pynsm 1.0.1 import paths, kept so that 1.0.1 code runs unchanged.

``from pynsm.util import extract_embeddings`` and
``from pynsm.util.validation import extract_embeddings`` both give
:func:`pynsm.eval.extract_embeddings`, where the function now lives.

Example:
    >>> import pynsm.eval
    >>> import pynsm.util
    >>> pynsm.util.extract_embeddings is pynsm.eval.extract_embeddings
    True
    >>> pynsm.util.validation.extract_embeddings is pynsm.eval.extract_embeddings
    True
"""

# Through the submodule, as 1.0.1 does: this also binds ``pynsm.util.validation``, so
# the attribute exists right after ``import pynsm.util``.
from pynsm.util.validation import extract_embeddings

__all__ = ["extract_embeddings"]
