"""extract_embeddings: outputs, labels, modes, streaming into one array."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.eval import extract_embeddings


def test_extract_embeddings_concatenates_outputs_and_restores_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    x, labels = torch.randn(10, 4), torch.arange(10)
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    seen = []
    result = extract_embeddings(model, loader, progress=lambda it: seen.append(1) or it)
    assert torch.allclose(result.output, model[0](x))  # eval mode: no dropout
    assert torch.equal(result.label, labels) and model.training and seen == [1]
    assert not result.output.requires_grad  # run under no_grad
    model.embed = lambda inp: 2 * model[0](inp)
    doubled = extract_embeddings(model, loader, progress=True, method="embed")
    assert torch.allclose(doubled.output, 2 * model[0](x))
    with pytest.raises(ValueError, match="no method"):
        extract_embeddings(model, loader, method="missing")


def test_outputs_stream_into_one_preallocated_array_of_the_asked_dtype():
    model = nn.Linear(4, 3).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.arange(10)), batch_size=3)
    result = extract_embeddings(model, loader, dtype=torch.float32)
    assert result.output.dtype == torch.float32 and result.output.shape == (10, 3)
    # one storage for all rows: the batches were written in place, not concatenated
    assert result.output.untyped_storage().nbytes() == 10 * 3 * 4
    assert torch.allclose(result.output, model(x).float(), atol=1e-6)


def test_loaders_without_a_known_length_and_bad_batches():
    model = nn.Linear(2, 2)
    batches = [(torch.randn(3, 2), torch.zeros(3)), (torch.randn(2, 2), torch.ones(2))]
    result = extract_embeddings(model, iter(batches))
    assert result.output.shape == (5, 2) and result.label.tolist() == [0] * 3 + [1] * 2
    # a loader dropping its last batch yields fewer rows than its dataset has
    loader = DataLoader(
        TensorDataset(torch.randn(5, 2), torch.arange(5)), batch_size=2, drop_last=True
    )
    assert extract_embeddings(model, loader).output.shape == (4, 2)
    with pytest.raises(ValueError, match="no batches"):
        extract_embeddings(model, [])
    with pytest.raises(ValueError, match=r"\(x, label\)"):
        extract_embeddings(model, [torch.randn(2, 2)])
