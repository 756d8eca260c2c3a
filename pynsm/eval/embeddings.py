"""Run a model over a labelled dataset and collect its outputs, streamed in batches."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Callable, Union

import torch
from torch import Tensor, nn

__all__ = ["extract_embeddings"]

Progress = Union[bool, Callable[[Iterable], Iterable], None]


def extract_embeddings(
    model: nn.Module,
    loader: Iterable,
    progress: Progress = False,
    *,
    method: str | None = None,
    dtype: torch.dtype | None = None,
) -> SimpleNamespace:
    """Run ``model`` over a labelled dataset and collect its outputs and the labels.

    The model is put in evaluation mode for the pass (and back afterwards) and
    runs under :func:`torch.no_grad`; inputs go to the device of the model's first
    parameter; outputs are detached and gathered on the CPU. When the loader
    knows its dataset's length, outputs are written batch by batch into one
    preallocated array (no second copy at the end), so the peak memory is the
    result itself. The labels are never shown to the model.

    Args:
        model: The module producing embeddings (a circuit, a backbone, a task).
        loader: Iterable of ``(x, label)`` batches, e.g. a ``DataLoader``.
        progress: ``True`` for a tqdm bar, or a tqdm-like callable wrapping the
            loader; ``False``/``None`` for none.
        method: Name of the model's method to call instead of ``forward``
            (e.g. ``"embed"`` for a task of :mod:`pynsm.train`).
        dtype: Store the outputs in this dtype (e.g. ``torch.float32`` to halve
            the memory of float64 outputs); ``None`` keeps the model's dtype.

    Returns:
        A namespace with ``output`` (the concatenated outputs, ``[N, *]``) and
        ``label`` (``[N]``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pynsm.eval import extract_embeddings
        >>> data = TensorDataset(torch.randn(10, 4), torch.arange(10) % 2)
        >>> result = extract_embeddings(nn.Linear(4, 3), DataLoader(data, batch_size=4))
        >>> result.output.shape, result.label.shape
        (torch.Size([10, 3]), torch.Size([10]))
    """
    function = model if method is None else getattr(model, method, None)
    if not callable(function):
        raise ValueError(f"model {type(model).__name__} has no method {method!r}")
    if progress is True:
        from tqdm.auto import tqdm

        iterable = tqdm(loader, desc="embed", unit="batch")
    elif callable(progress):
        iterable = progress(loader)
    else:
        iterable = loader
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    sink = _Sink(_expected_length(loader), dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in iterable:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("loader must yield (x, label) batches")
                x, label = batch[0], batch[1]
                sink.add(function(x.to(device)).detach().cpu(), torch.as_tensor(label))
    finally:
        model.train(was_training)
    return sink.result()


def _expected_length(loader: Iterable) -> int | None:
    # a plain DataLoader over a sized dataset yields exactly len(dataset) rows
    dataset = getattr(loader, "dataset", None)
    if dataset is None or getattr(loader, "drop_last", False):
        return None
    try:
        return len(dataset)
    except TypeError:
        return None


class _Sink:
    """Rows written into preallocated arrays; falls back to a list if they overflow."""

    def __init__(self, length: int | None, dtype: torch.dtype | None) -> None:
        self.length, self.dtype = length, dtype
        self.outputs: Tensor | None = None
        self.labels: Tensor | None = None
        self.filled = 0
        self.pieces: list[tuple[Tensor, Tensor]] = []

    def add(self, output: Tensor, label: Tensor) -> None:
        if self.dtype is not None:
            output = output.to(self.dtype)
        label = label.detach().cpu()
        rows = len(output)
        if self.outputs is None and self.length is not None and not self.pieces:
            self.outputs = torch.empty(
                (self.length, *output.shape[1:]), dtype=output.dtype
            )
            self.labels = torch.empty(
                (self.length, *label.shape[1:]), dtype=label.dtype
            )
        fits = (
            self.outputs is not None
            and self.labels is not None
            and self.filled + rows <= len(self.outputs)
            and output.shape[1:] == self.outputs.shape[1:]
            and output.dtype == self.outputs.dtype
            and label.shape[1:] == self.labels.shape[1:]
            and label.dtype == self.labels.dtype
        )
        if fits:
            self.outputs[self.filled : self.filled + rows] = output
            self.labels[self.filled : self.filled + rows] = label
            self.filled += rows
            return
        if self.outputs is not None and self.labels is not None:  # not what we expected
            self.pieces.append(
                (self.outputs[: self.filled], self.labels[: self.filled])
            )
            self.outputs = self.labels = None
        self.pieces.append((output, label))

    def result(self) -> SimpleNamespace:
        if self.outputs is not None and self.labels is not None and not self.pieces:
            if self.filled == 0:
                raise ValueError("loader yielded no batches")
            return SimpleNamespace(
                output=self.outputs[: self.filled], label=self.labels[: self.filled]
            )
        if self.outputs is not None and self.labels is not None:
            self.pieces.insert(
                0, (self.outputs[: self.filled], self.labels[: self.filled])
            )
        if not self.pieces:
            raise ValueError("loader yielded no batches")
        return SimpleNamespace(
            output=torch.cat([p[0] for p in self.pieces]),
            label=torch.cat([p[1] for p in self.pieces]),
        )
