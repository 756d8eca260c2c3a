"""The DINO loss: self-distillation with a centred, sharpened teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import (
    at_least_float32,
    autocast_disabled,
    update_if_finite,
)
from pynsm.validation import check_float, check_int

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """Cross entropy between a centred, sharpened teacher and the student (DINO).

    Caron et al., *Emerging Properties in Self-Supervised Vision Transformers*, 2021,
    https://arxiv.org/abs/2104.14294.

    With teacher views ``t`` and student views ``s`` (global views first, so view
    ``j`` of both is the same crop), ``P_t = softmax((teacher_t - center) / T_t)`` and
    ``log P_s = log_softmax(student_s / T_s)``, the loss is the mean over the batch
    and over all pairs ``(t, s)`` with ``t != s`` of ``-sum_k P_t,k log P_s,k``.
    The teacher temperature rises linearly from ``warmup_teacher_temp`` (epoch 0) to
    ``teacher_temp`` (epoch ``warmup_teacher_temp_epochs - 1``) and stays there. Each
    call then updates the centre: ``center = m * center + (1 - m) * batch_mean``,
    where the batch mean covers every process when :mod:`torch.distributed` is
    initialised. A teacher batch holding a non-finite value leaves the centre as it
    was, so one bad batch does not make every later loss non-finite (on the CPU
    with a ``RuntimeWarning``; on an accelerator the old centre is kept with
    ``torch.where``, without a host sync and without a warning).

    Args:
        output_dim: Dimension ``K`` of the model output.
        warmup_teacher_temp: Teacher temperature at epoch 0 (> 0).
        teacher_temp: Teacher temperature after the warm-up (> 0).
        warmup_teacher_temp_epochs: Length of the linear warm-up in epochs (>= 0).
        student_temp: Student temperature (> 0).
        center_momentum: Momentum ``m`` of the centre's moving average.

    Shapes:
        ``teacher_out``: list of ``[B, K]``; ``student_out``: list of ``[B, K]`` →
        scalar. The centre buffer is ``[1, 1, K]``.

    Example:
        >>> import torch
        >>> from pynsm.losses import DINOLoss
        >>> loss_fn = DINOLoss(output_dim=32)
        >>> teacher = [torch.randn(4, 32) for _ in range(2)]
        >>> student = [torch.randn(4, 32, requires_grad=True) for _ in range(4)]
        >>> loss = loss_fn(teacher, student, epoch=0)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """

    center: torch.Tensor

    def __init__(
        self,
        output_dim: int = 65536,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        output_dim = check_int("output_dim", output_dim, minimum=1)
        warmup_teacher_temp = check_float(
            "warmup_teacher_temp", warmup_teacher_temp, minimum=0, strict=True
        )
        teacher_temp = check_float("teacher_temp", teacher_temp, minimum=0, strict=True)
        warmup_teacher_temp_epochs = check_int(
            "warmup_teacher_temp_epochs", warmup_teacher_temp_epochs, minimum=0
        )
        student_temp = check_float("student_temp", student_temp, minimum=0, strict=True)
        if not 0 <= center_momentum <= 1:
            raise ValueError(
                f"center_momentum must be in [0, 1], got {center_momentum!r}."
            )
        self.output_dim = output_dim
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, output_dim))

    def teacher_temperature(self, epoch: int) -> float:
        """Teacher temperature at ``epoch`` (linear warm-up, then constant)."""
        epoch = check_int("epoch", epoch, minimum=0)
        steps = self.warmup_teacher_temp_epochs
        if epoch >= steps:
            return self.teacher_temp
        if steps == 1:
            return self.warmup_teacher_temp
        fraction = epoch / (steps - 1)
        return self.warmup_teacher_temp + fraction * (
            self.teacher_temp - self.warmup_teacher_temp
        )

    def forward(
        self,
        teacher_out: list[torch.Tensor],
        student_out: list[torch.Tensor],
        epoch: int,
    ) -> torch.Tensor:
        """Compute the DINO loss and update the centre.

        Args:
            teacher_out: Teacher outputs, one ``[B, K]`` tensor per view.
            student_out: Student outputs, one ``[B, K]`` tensor per view (the first
                ``len(teacher_out)`` views are the teacher's views).
            epoch: Current training epoch (drives the temperature warm-up).

        Returns:
            Scalar average cross entropy over the pairs of different views.
        """
        teacher, student = _check_views(teacher_out, student_out, self.output_dim)
        num_pairs = len(teacher) * len(student) - min(len(teacher), len(student))
        if num_pairs == 0:
            raise ValueError(
                "teacher_out and student_out must provide at least one pair of "
                "different views (e.g. two teacher views, or one teacher view and two "
                "student views)."
            )
        teacher_temp = self.teacher_temperature(epoch)
        with autocast_disabled(teacher[0]):
            teacher32 = [at_least_float32(view) for view in teacher]
            center = self.center[0]
            teacher_probs = [
                F.softmax((view - center) / teacher_temp, dim=-1) for view in teacher32
            ]
            # sum over pairs t != s of <P_t, log P_s> = sum_s <W_s, log P_s> with
            # W_s = sum_t P_t minus P_s for a shared view: one product per student
            # view, no [views, B, K] stacks and no batched matmul
            all_teachers = teacher_probs[0]
            for probs in teacher_probs[1:]:
                all_teachers = all_teachers + probs
            total = teacher_probs[0].new_zeros(())
            for index, view in enumerate(student):
                log_probs = F.log_softmax(
                    at_least_float32(view) / self.student_temp, dim=-1
                )
                weights = all_teachers
                if index < len(teacher_probs):
                    weights = all_teachers - teacher_probs[index]
                total = total + (weights * log_probs).sum()
            loss = -total / (num_pairs * teacher[0].shape[0])
            self._update_center_from_views(teacher32)
        return loss

    @torch.no_grad()
    def _update_center_from_views(self, views: list[torch.Tensor]) -> None:
        batch_center = views[0].detach().mean(dim=0)
        for view in views[1:]:
            batch_center = batch_center + view.detach().mean(dim=0)
        self._apply_batch_center((batch_center / len(views)).reshape(1, 1, -1))

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """Moving-average update of the centre from stacked teacher outputs.

        Args:
            teacher_out: ``[V, B, K]`` (or ``[B, K]``) teacher outputs; the mean over
                every dimension but the last (and over processes when distributed)
                is the batch centre.
        """
        if teacher_out.shape[-1] != self.output_dim:
            raise ValueError(
                f"teacher_out must have last dimension output_dim={self.output_dim}, "
                f"got {tuple(teacher_out.shape)}."
            )
        flat = at_least_float32(teacher_out.detach()).reshape(-1, self.output_dim)
        self._apply_batch_center(flat.mean(dim=0).reshape(1, 1, -1))

    @torch.no_grad()
    def _apply_batch_center(self, batch_center: torch.Tensor) -> None:
        # the batch mean covers every process when a process group is initialised
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
        update_if_finite([self.center], [center], "DINOLoss centre")


def _check_views(
    teacher_out: list[torch.Tensor], student_out: list[torch.Tensor], output_dim: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if len(teacher_out) == 0 or len(student_out) == 0:
        raise ValueError("teacher_out and student_out must each hold a view.")
    shape = teacher_out[0].shape
    if len(shape) != 2 or shape[1] != output_dim:
        raise ValueError(
            f"teacher_out views must have shape [B, output_dim={output_dim}], got "
            f"{tuple(shape)}."
        )
    for name, views in (("teacher_out", teacher_out), ("student_out", student_out)):
        for view in views:
            if view.shape != shape:
                raise ValueError(
                    f"every view of {name} must have shape {tuple(shape)}, got "
                    f"{tuple(view.shape)}."
                )
    return list(teacher_out), list(student_out)
