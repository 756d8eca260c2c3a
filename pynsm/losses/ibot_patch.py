"""The iBOT masked-patch loss: a centred, sharpened teacher per masked patch token."""

from __future__ import annotations

import torch
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import (
    at_least_float32,
    autocast_disabled,
    update_if_finite,
)
from pynsm.validation import check_choice, check_float, check_int

__all__ = ["IBOTPatchLoss", "ibot_patch_loss"]


def ibot_patch_loss(
    teacher_out: torch.Tensor,
    student_out: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor | None = None,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Masked-patch self-distillation loss of iBOT (Zhou et al. 2022, eq. 2).

    For every masked patch token ``n`` of image ``b``, with the teacher's centred,
    sharpened distribution ``P_t = softmax((t_n - center) / teacher_temp)`` and the
    student's ``log P_s = log_softmax(s_n / student_temp)``::

        loss = 1/B sum_b 1/max(1, M_b) sum_{n masked in b} -sum_k P_t,k log P_s,k

    where ``M_b`` is the number of masked tokens of image ``b`` (so every image
    weighs the same, as in DINOv2). The cross entropy is computed as
    ``logsumexp(s_n / student_temp) - <P_t, s_n> / student_temp``, in float32 at
    least and outside autocast, so tiny temperatures stay finite. The teacher gets
    no gradient.

    Args:
        teacher_out: ``[N, K]`` teacher outputs of the masked tokens, in the
            order of ``mask.nonzero()`` (row-major over the mask).
        student_out: ``[N, K]`` student outputs of the same tokens.
        mask: ``[B, ...]`` boolean token mask (e.g. ``[B, H, W]``) with exactly
            ``N`` entries set.
        center: ``[K]`` or ``[1, K]`` centre subtracted from the teacher outputs
            (``None``: no centring).
        teacher_temp: Teacher temperature (> 0).
        student_temp: Student temperature (> 0).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import ibot_patch_loss
        >>> mask = torch.zeros(2, 3, 3, dtype=torch.bool)
        >>> mask[:, 0] = True  # 3 masked tokens per image
        >>> teacher, student = torch.randn(6, 16), torch.randn(6, 16)
        >>> ibot_patch_loss(teacher, student, mask).shape
        torch.Size([])
    """
    teacher_temp = check_float("teacher_temp", teacher_temp, minimum=0, strict=True)
    student_temp = check_float("student_temp", student_temp, minimum=0, strict=True)
    _check_inputs(teacher_out, student_out, mask)
    with autocast_disabled(student_out):
        teacher = at_least_float32(teacher_out.detach())
        if center is not None:
            teacher = teacher - center.reshape(1, -1).to(teacher)
        teacher_probs = torch.softmax(teacher / teacher_temp, dim=-1)
        student = at_least_float32(student_out) / student_temp
        # -sum_k P_t,k log P_s,k = logsumexp(s) - <P_t, s>, since sum_k P_t,k = 1
        cross_entropy = torch.logsumexp(student, dim=-1) - (
            teacher_probs.to(student.dtype) * student
        ).sum(dim=-1)
        flat_mask = mask.reshape(mask.shape[0], -1)
        per_image = flat_mask.sum(dim=1).clamp(min=1).to(cross_entropy.dtype)
        image_of_token = flat_mask.nonzero()[:, 0]
        weights = per_image.reciprocal()[image_of_token]
        return (cross_entropy * weights).sum() / mask.shape[0]


def _check_inputs(
    teacher_out: torch.Tensor, student_out: torch.Tensor, mask: torch.Tensor
) -> None:
    if teacher_out.ndim != 2 or teacher_out.shape != student_out.shape:
        raise ValueError(
            "teacher_out and student_out must both have shape [num_masked, K], got "
            f"{tuple(teacher_out.shape)} and {tuple(student_out.shape)}"
        )
    if mask.dtype != torch.bool or mask.ndim < 2:
        raise ValueError(
            f"mask must be a boolean [B, H, W] tensor, got {mask.dtype} of shape "
            f"{tuple(mask.shape)}"
        )
    masked = int(mask.sum())
    if masked != teacher_out.shape[0]:
        raise ValueError(
            f"mask sets {masked} tokens but teacher_out has {teacher_out.shape[0]} "
            "rows (one per masked token)"
        )


class IBOTPatchLoss(nn.Module):
    """iBOT patch loss with a moving-average teacher centre, as used in DINOv2.

    Zhou et al., *iBOT: Image BERT Pre-Training with Online Tokenizer*, 2022,
    https://arxiv.org/abs/2111.07832 (masked image modelling term, eq. 2);
    Oquab et al., *DINOv2*, 2023, https://arxiv.org/abs/2304.07193 (per-image
    weighting of the masked tokens). See :func:`ibot_patch_loss` for the formula.

    After each call the centre moves towards the mean teacher output of the masked
    tokens: ``center = m * center + (1 - m) * mean_n t_n``; when a
    :mod:`torch.distributed` process group is initialised the per-process means are
    averaged over processes first (so every process keeps the same centre). A
    teacher batch holding a non-finite value leaves the centre as it was (as in
    :class:`~pynsm.losses.DINOLoss`).
    Parameters and defaults are lightly 1.6.0's ``IBOTPatchLoss``.

    Args:
        output_dim: Number of prototypes ``K``.
        teacher_temp: Teacher temperature (> 0); ``forward`` may override it.
        student_temp: Student temperature (> 0).
        center_mode: How the batch centre is computed; only ``"mean"``.
        center_momentum: Momentum ``m`` of the centre, in ``[0, 1]``.

    Attributes:
        center: ``[1, K]`` buffer (in ``state_dict``).

    Raises:
        TypeError: for a non-integer ``output_dim`` or non-numeric temperatures.
        ValueError: for values out of range, or an unknown ``center_mode``.

    Shapes:
        ``teacher_out``, ``student_out``: ``[N, K]``; ``mask``: ``[B, H, W]`` with
        ``N`` entries set; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import IBOTPatchLoss
        >>> loss_fn = IBOTPatchLoss(output_dim=16)
        >>> mask = torch.rand(2, 4, 4) < 0.5
        >>> n = int(mask.sum())
        >>> student = torch.randn(n, 16, requires_grad=True)
        >>> loss = loss_fn(torch.randn(n, 16), student, mask)
        >>> loss.backward()
        >>> loss_fn.center.shape
        torch.Size([1, 16])
    """

    center: torch.Tensor

    def __init__(
        self,
        output_dim: int = 65536,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_mode: str = "mean",
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.output_dim = check_int("output_dim", output_dim, minimum=1)
        self.teacher_temp = check_float(
            "teacher_temp", teacher_temp, minimum=0, strict=True
        )
        self.student_temp = check_float(
            "student_temp", student_temp, minimum=0, strict=True
        )
        self.center_mode = check_choice("center_mode", center_mode, ("mean",))
        self.center_momentum = check_float(
            "center_momentum", center_momentum, minimum=0.0, maximum=1.0
        )
        self.register_buffer("center", torch.zeros(1, self.output_dim))

    def forward(
        self,
        teacher_out: torch.Tensor,
        student_out: torch.Tensor,
        mask: torch.Tensor,
        teacher_temp: float | None = None,
    ) -> torch.Tensor:
        """Compute the loss, then update the centre.

        Args:
            teacher_out: ``[N, K]`` teacher outputs of the masked tokens.
            student_out: ``[N, K]`` student outputs of the masked tokens.
            mask: ``[B, H, W]`` boolean mask with ``N`` entries set.
            teacher_temp: Teacher temperature for this call (``None``: the one
                given at construction), e.g. from a warm-up schedule.

        Returns:
            Scalar loss.
        """
        if teacher_out.ndim == 2 and teacher_out.shape[1] != self.output_dim:
            raise ValueError(
                f"teacher_out must have shape [N, output_dim={self.output_dim}], got "
                f"{tuple(teacher_out.shape)}"
            )
        loss = ibot_patch_loss(
            teacher_out,
            student_out,
            mask,
            center=self.center,
            teacher_temp=self.teacher_temp if teacher_temp is None else teacher_temp,
            student_temp=self.student_temp,
        )
        self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """Moving-average update of the centre from ``[N, K]`` teacher outputs."""
        if teacher_out.shape[0] == 0:
            raise ValueError("teacher_out holds no token: cannot update the centre")
        batch_center = at_least_float32(teacher_out.detach()).mean(0, keepdim=True)
        if distributed.world_size() > 1:
            batch_center = distributed.all_reduce_sum(batch_center) / (
                distributed.world_size()
            )
        center = torch.add(
            self.center * self.center_momentum,
            batch_center.to(self.center.dtype),
            alpha=1 - self.center_momentum,
        )
        # decided after the all-reduce: every process keeps or skips alike
        update_if_finite([self.center], [center], "IBOTPatchLoss centre")
