"""VICRegL: VICReg on global features plus VICReg on matched local features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import at_least_float32, autocast_disabled
from pynsm.losses.vicreg import _covariance, _variance, vicreg_loss
from pynsm.validation import check_int

ViewFeatures = Sequence[tuple[torch.Tensor, torch.Tensor]]


def nearest_neighbors(
    input_features: torch.Tensor,
    candidate_features: torch.Tensor,
    distances: torch.Tensor,
    num_matches: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each input position with its nearest candidate and keep the best pairs.

    For every input position the closest candidate (smallest ``distances``) is
    found; of those pairs the ``num_matches`` with the smallest distance are kept,
    sorted by increasing distance.

    Args:
        input_features: ``[B, N, D]`` features of the input positions.
        candidate_features: ``[B, M, D]`` features of the candidate positions.
        distances: ``[B, N, M]`` distances between positions.
        num_matches: Pairs to keep; ``-1`` or more than ``N`` keeps all ``N``.

    Returns:
        ``(inputs, matches)``, both ``[B, num_matches, D]``.

    Example:
        >>> import torch
        >>> from pynsm.losses.vicregl import nearest_neighbors
        >>> a, b = torch.randn(2, 5, 3), torch.randn(2, 7, 3)
        >>> x, y = nearest_neighbors(a, b, torch.cdist(a, b), num_matches=2)
        >>> x.shape, y.shape
        (torch.Size([2, 2, 3]), torch.Size([2, 2, 3]))
    """
    if num_matches == -1 or num_matches > input_features.shape[1]:
        num_matches = input_features.shape[1]
    nearest_distance, nearest_index = distances.topk(k=1, dim=2, largest=False)
    _, kept = nearest_distance.squeeze(-1).topk(k=num_matches, dim=1, largest=False)
    dim = input_features.shape[2]
    inputs = torch.gather(input_features, 1, kept.unsqueeze(-1).expand(-1, -1, dim))
    match_index = torch.gather(nearest_index.squeeze(-1), 1, kept)
    matches = torch.gather(
        candidate_features, 1, match_index.unsqueeze(-1).expand(-1, -1, dim)
    )
    return inputs, matches


class VICRegLLoss(nn.Module):
    """VICRegL loss (Bardes et al. 2022, https://arxiv.org/abs/2210.01571).

    ``alpha * global_loss + (1 - alpha) * local_loss``, following the authors'
    code:

    - global: the invariance term averaged over every ordered pair (global view,
      other view), variance and covariance averaged over every view (global and
      local), each weighted by ``lambda_param``, ``mu_param``, ``nu_param``;
    - local: for every ordered pair (global view, other view), the local feature
      maps are matched twice, by nearest neighbours in feature space (L2) and by
      nearest neighbours in image location (the grids), keeping
      ``num_matches[0]`` pairs in one direction and ``num_matches[1]`` in the
      other; the VICReg loss of the matched features (covariance weight
      ``nu_param / 2``, as in the authors' code) is averaged over both directions
      and summed over the two matchings, then averaged over the view pairs.

    Computed in at least float32 and outside autocast, as :func:`vicreg_loss`:
    half-precision features give the float32 loss of the same values (gradients
    keep the input dtype).

    Args:
        lambda_param: Coefficient for the invariance term.
        mu_param: Coefficient for the variance term.
        nu_param: Coefficient for the covariance term.
        alpha: Weight of the global loss against the local loss, in ``[0, 1]``.
        gather_distributed: If ``True``, the features of all processes are
            gathered (with gradients) for the variance and covariance terms.
        eps: Epsilon for numerical stability.
        num_matches: Number of local features to match using nearest neighbours
            (first and second search direction).

    Raises:
        ValueError: for ``alpha`` outside ``[0, 1]``, a negative ``eps``,
            ``num_matches`` that is not two positive ints (or -1), or
            ``gather_distributed`` without :mod:`torch.distributed`; in
            ``forward`` for features and grids that do not pair up.

    Shapes:
        each view is ``(global_features [B, D_g], local_features [B, H, W, D_l])``
        with a grid ``[B, H, W, 2]``; ``H, W`` may differ between global and local
        views. Returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import VICRegLLoss
        >>> criterion = VICRegLLoss(num_matches=(4, 2))
        >>> def view(h):
        ...     return (torch.randn(8, 16), torch.randn(8, h, h, 12))
        >>> def grid(h):
        ...     return torch.rand(8, h, h, 2)
        >>> loss = criterion(
        ...     global_view_features=[view(4), view(4)],
        ...     global_view_grids=[grid(4), grid(4)],
        ...     local_view_features=[view(2)],
        ...     local_view_grids=[grid(2)],
        ... )
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        alpha: float = 0.75,
        gather_distributed: bool = False,
        eps: float = 0.0001,
        num_matches: tuple[int, int] = (20, 4),
    ) -> None:
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        if len(num_matches) != 2:
            raise ValueError(f"num_matches must be two ints, got {num_matches!r}")
        num_matches = tuple(
            check_int("num_matches", n, minimum=-1) for n in num_matches
        )
        if 0 in num_matches:
            raise ValueError(
                f"num_matches must be two positive ints (or -1), got {num_matches}"
            )
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available"
            )
        self.lambda_param = lambda_param
        self.mu_param = mu_param
        self.nu_param = nu_param
        self.alpha = alpha
        self.gather_distributed = gather_distributed
        self.eps = eps
        self.num_matches = tuple(num_matches)

    def forward(
        self,
        global_view_features: ViewFeatures,
        global_view_grids: Sequence[torch.Tensor],
        local_view_features: ViewFeatures | None = None,
        local_view_grids: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Computes the global and local VICRegL loss from the input features.

        Args:
            global_view_features: ``(global_features [B, D_g], local_features
                [B, H, W, D_l])`` per global crop.
            global_view_grids: ``[B, H, W, 2]`` grid per global crop.
            local_view_features: Same as ``global_view_features`` for the local
                crops (their ``H, W`` may differ), or ``None``.
            local_view_grids: Grids of the local crops, or ``None``.

        Returns:
            ``alpha * global_loss + (1 - alpha) * local_loss``.
        """
        if len(global_view_features) != len(global_view_grids):
            raise ValueError(
                "global_view_features and global_view_grids must have the same "
                f"length, got {len(global_view_features)} and {len(global_view_grids)}"
            )
        if (local_view_features is None) != (local_view_grids is None):
            raise ValueError(
                "local_view_features and local_view_grids must both be set or None"
            )
        local_view_features = list(local_view_features or [])
        local_view_grids = list(local_view_grids or [])
        if len(local_view_features) != len(local_view_grids):
            raise ValueError(
                "local_view_features and local_view_grids must have the same "
                f"length, got {len(local_view_features)} and {len(local_view_grids)}"
            )
        views = list(global_view_features) + local_view_features
        grids = list(global_view_grids) + local_view_grids
        if len(global_view_features) < 1 or len(views) < 2:
            raise ValueError("VICRegL needs a global view and at least one other view")
        for (global_features, local_features), grid in zip(views, grids):
            if (
                local_features.ndim != 4
                or grid.shape != (*local_features.shape[:3], 2)
                or global_features.shape[0] != local_features.shape[0]
            ):
                raise ValueError(
                    "each view needs global features [B, D], local features "
                    "[B, H, W, D] and a grid [B, H, W, 2], got "
                    f"{tuple(global_features.shape)}, {tuple(local_features.shape)} "
                    f"and {tuple(grid.shape)}"
                )
        with autocast_disabled(views[0][0]):
            # float32 at least, as VICReg: unnormalised half-precision features
            # overflow in the covariances (and cdist has no half kernel on the CPU)
            views = [tuple(at_least_float32(t) for t in view) for view in views]
            grids = [at_least_float32(grid) for grid in grids]
            return self._loss(len(global_view_features), views, grids)

    def _loss(
        self,
        num_global: int,
        views: list[tuple[torch.Tensor, torch.Tensor]],
        grids: list[torch.Tensor],
    ) -> torch.Tensor:
        # ordered pairs (global view a, any other view b), as in the authors' code
        pairs = [(a, b) for a in range(num_global) for b in range(len(views)) if b != a]
        global_loss = self._global_loss([g for g, _ in views], pairs)
        local_loss = sum(
            self._local_loss(views[a][1], views[b][1], grids[a], grids[b])
            for a, b in pairs
        ) / len(pairs)
        return self.alpha * global_loss + (1 - self.alpha) * local_loss

    def _global_loss(
        self, features: list[torch.Tensor], pairs: list[tuple[int, int]]
    ) -> torch.Tensor:
        invariance = sum(F.mse_loss(features[a], features[b]) for a, b in pairs)
        if self.gather_distributed:
            features = [distributed.gather(f) for f in features]
        variance = sum(_variance(f, self.eps) for f in features)
        covariance = sum(_covariance(f) for f in features)
        return (
            self.lambda_param * invariance / len(pairs)
            + self.mu_param * variance / len(features)
            + self.nu_param * covariance / len(features)
        )

    def _local_loss(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        grid_a: torch.Tensor,
        grid_b: torch.Tensor,
    ) -> torch.Tensor:
        # [B, H, W, D] -> [B, H * W, D]
        z_a, z_b = z_a.flatten(1, 2), z_b.flatten(1, 2)
        grid_a, grid_b = grid_a.flatten(1, 2), grid_b.flatten(1, 2)
        with torch.no_grad():  # matching picks indices; no gradient through it
            # both directions computed, not transposed, so ties break the same way
            matchings = [
                (torch.cdist(z_a, z_b), torch.cdist(z_b, z_a)),
                (torch.cdist(grid_a, grid_b), torch.cdist(grid_b, grid_a)),
            ]
        loss = 0
        for distances_ab, distances_ba in matchings:
            a_inputs, a_matches = nearest_neighbors(
                z_a, z_b, distances_ab, self.num_matches[0]
            )
            b_inputs, b_matches = nearest_neighbors(
                z_b, z_a, distances_ba, self.num_matches[1]
            )
            loss = loss + 0.5 * (
                self._matched_vicreg(a_inputs, a_matches)
                + self._matched_vicreg(b_inputs, b_matches)
            )
        return loss

    def _matched_vicreg(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return vicreg_loss(  # checks the batch size of the matched features
            x,
            y,
            self.lambda_param,
            self.mu_param,
            0.5 * self.nu_param,  # the VICRegL code averages, VICReg sums, the views
            self.eps,
            self.gather_distributed,
        )
