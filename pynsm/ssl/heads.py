"""Projection heads and prototype layers of the SSL models (MSN, PMSN, SwaV)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pynsm.validation import check_int


class ProjectionHead(nn.Module):
    """An MLP given as blocks ``(in_dim, out_dim, batch_norm, activation)``.

    Each block is ``Linear`` (without bias when followed by batch norm, which would
    cancel it), then the optional batch norm, then the optional activation.

    Args:
        blocks: Sequence of ``(input_dim, output_dim, nn.Module | None,
            nn.Module | None)``.

    Example:
        >>> head = ProjectionHead(
        ...     [(4, 8, nn.BatchNorm1d(8), nn.ReLU()), (8, 2, None, None)]
        ... )
        >>> head(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        blocks: Sequence[tuple[int, int, nn.Module | None, nn.Module | None]],
    ) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("blocks must hold at least one block")
        layers: list[nn.Module] = []
        for input_dim, output_dim, batch_norm, activation in blocks:
            input_dim = check_int("input_dim", input_dim, minimum=1)
            output_dim = check_int("output_dim", output_dim, minimum=1)
            layers.append(nn.Linear(input_dim, output_dim, bias=batch_norm is None))
            if batch_norm is not None:
                layers.append(batch_norm)
            if activation is not None:
                layers.append(activation)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Project features ``[B, input_dim]`` to ``[B, output_dim]``."""
        return self.layers(x)


class MSNProjectionHead(ProjectionHead):
    """MSN projection head: three linear layers, batch norm and GELU between them.

    ``Linear → BN → GELU → Linear → BN → GELU → Linear`` (Assran et al., 2022,
    https://arxiv.org/abs/2204.07141).

    Args:
        input_dim: Backbone feature size.
        hidden_dim: Width of the hidden layers.
        output_dim: Size of the projections compared with the prototypes.

    Example:
        >>> MSNProjectionHead(64, 128, 32)(torch.randn(4, 64)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self, input_dim: int = 384, hidden_dim: int = 2048, output_dim: int = 256
    ) -> None:
        hidden_dim = check_int("hidden_dim", hidden_dim, minimum=1)
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.GELU()),
                (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.GELU()),
                (hidden_dim, output_dim, None, None),
            ]
        )


class SwaVProjectionHead(ProjectionHead):
    """SwaV projection head: ``Linear → BN → ReLU → Linear``.

    (Caron et al., 2020, https://arxiv.org/abs/2006.09882)

    Args:
        input_dim: Backbone feature size.
        hidden_dim: Width of the hidden layer.
        output_dim: Size of the projections compared with the prototypes.

    Example:
        >>> SwaVProjectionHead(64, 64, 16)(torch.randn(4, 64)).shape
        torch.Size([4, 16])
    """

    def __init__(
        self, input_dim: int = 2048, hidden_dim: int = 2048, output_dim: int = 128
    ) -> None:
        hidden_dim = check_int("hidden_dim", hidden_dim, minimum=1)
        super().__init__(
            [
                (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
                (hidden_dim, output_dim, None, None),
            ]
        )


class MSNPrototypes(nn.Module):
    """Learnable MSN prototypes: a ``weight`` of shape ``[n_prototypes, input_dim]``.

    ``MSNLoss`` receives ``weight`` directly and normalises it itself, so the
    prototypes are a plain parameter (initialised like a bias-free ``nn.Linear``).
    Calling the module returns the cosine similarities of features to the prototypes.

    Args:
        input_dim: Dimension of the projections.
        n_prototypes: Number of prototypes.

    Example:
        >>> prototypes = MSNPrototypes(32, n_prototypes=10)
        >>> prototypes.weight.shape, prototypes(torch.randn(4, 32)).shape
        (torch.Size([10, 32]), torch.Size([4, 10]))
    """

    def __init__(self, input_dim: int = 256, n_prototypes: int = 1024) -> None:
        super().__init__()
        input_dim = check_int("input_dim", input_dim, minimum=1)
        n_prototypes = check_int("n_prototypes", n_prototypes, minimum=1)
        initial = nn.Linear(input_dim, n_prototypes, bias=False).weight
        self.weight = nn.Parameter(initial.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """Cosine similarities ``[B, n_prototypes]`` of features ``x`` ``[B, D]``."""
        return (
            nn.functional.normalize(x, dim=1)
            @ nn.functional.normalize(self.weight, dim=1).T
        )


class SwaVPrototypes(nn.Module):
    """SwaV prototypes: one or several bias-free linear layers on normalised features.

    Weights are kept on the unit sphere by calling :meth:`normalize` (at construction
    and after every optimizer step), so the outputs are cosine similarities between
    normalised features and prototypes. For the first ``n_steps_frozen_prototypes``
    steps (the unit is the caller's: SwaV freezes them for the first epoch(s)) the
    prototypes are not trained, which stabilises the start of training.

    Two ways to freeze are offered:

    * seed style: ``forward(x, step)`` switches ``requires_grad`` of the prototypes;
    * :meth:`drop_grad_if_frozen` (used by :class:`~pynsm.ssl.swav.SwaV` after
      backward) sets the gradients to ``None`` so that optimizers skip the prototypes.
      It never changes ``requires_grad``, which keeps ``DistributedDataParallel``
      happy.

    Args:
        input_dim: Dimension of the (normalised) projections.
        n_prototypes: Number of prototypes, or a list of numbers for several heads
            (multi-head SwaV); ``forward`` then returns a list of outputs.
        n_steps_frozen_prototypes: Number of first steps during which the prototypes
            are frozen.

    Example:
        >>> prototypes = SwaVPrototypes(16, n_prototypes=8, n_steps_frozen_prototypes=1)
        >>> features = nn.functional.normalize(torch.randn(4, 16), dim=1)
        >>> scores = prototypes(features, step=0)
        >>> scores.shape, bool(scores.abs().max() <= 1 + 1e-6)
        (torch.Size([4, 8]), True)
    """

    def __init__(
        self,
        input_dim: int = 128,
        n_prototypes: int | Sequence[int] = 3000,
        n_steps_frozen_prototypes: int = 0,
    ) -> None:
        super().__init__()
        input_dim = check_int("input_dim", input_dim, minimum=1)
        multi_head = isinstance(n_prototypes, Sequence)
        counts = list(n_prototypes) if multi_head else [n_prototypes]
        if len(counts) == 0:
            raise ValueError("n_prototypes must be a positive int or a non-empty list")
        counts = [check_int("n_prototypes", count, minimum=1) for count in counts]
        n_steps_frozen_prototypes = check_int(
            "n_steps_frozen_prototypes", n_steps_frozen_prototypes, minimum=0
        )
        self._multi_head = multi_head
        self.n_steps_frozen_prototypes = n_steps_frozen_prototypes
        self.heads = nn.ModuleList(
            [nn.Linear(input_dim, count, bias=False) for count in counts]
        )
        self.normalize()

    def forward(self, x: Tensor, step: int | None = None) -> Tensor | list[Tensor]:
        """Scores ``[B, n_prototypes]`` of features ``x`` ``[B, input_dim]``.

        Args:
            x: Features, normally L2-normalised.
            step: Current step (or epoch); required when
                ``n_steps_frozen_prototypes > 0`` (seed-style freezing).

        Returns:
            One score tensor, or a list of them for several heads.
        """
        self._freeze_prototypes_if_required(step)
        return self.scores(x)

    def scores(self, x: Tensor) -> Tensor | list[Tensor]:
        """Like ``forward`` but never touches ``requires_grad`` (no ``step`` needed)."""
        outputs = [head(x) for head in self.heads]
        return outputs if self._multi_head else outputs[0]

    @torch.no_grad()
    def normalize(self) -> None:
        """Project every prototype onto the unit sphere (in place)."""
        for head in self.heads:
            head.weight.copy_(nn.functional.normalize(head.weight, dim=1, p=2))

    def is_frozen(self, step: int) -> bool:
        """Whether the prototypes are frozen at ``step``."""
        return step < self.n_steps_frozen_prototypes

    def drop_grad_if_frozen(self, step: int) -> None:
        """Set the prototypes' gradients to ``None`` while frozen (call after backward).

        Optimizers skip parameters without a gradient, so neither the update nor
        weight decay nor momentum touch the prototypes.
        """
        if self.is_frozen(step):
            for param in self.parameters():
                param.grad = None

    def _freeze_prototypes_if_required(self, step: int | None) -> None:
        if self.n_steps_frozen_prototypes == 0:
            return
        if step is None:
            raise ValueError(
                "step must be given when n_steps_frozen_prototypes > 0 "
                f"(got n_steps_frozen_prototypes={self.n_steps_frozen_prototypes})"
            )
        frozen = self.is_frozen(step)
        for param in self.parameters():
            param.requires_grad_(not frozen)
