"""The ``Example:`` blocks of the contrastive-loss docstrings run and print what
they claim (they are what the API reference shows)."""

import doctest
import importlib

import pytest

MODULES = [
    "barlow_twins",
    "co2",
    "dcl",
    "hypersphere",
    "memory_bank",
    "negative_cosine_similarity",
    "ntx_ent",
    "sym_neg_cos_sim",
    "tico",
    "vicreg",
    "vicregl",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"pynsm.losses.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
