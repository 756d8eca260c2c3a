"""IBOTPatchLoss against a float64 transcription of iBOT eq. 2 (DINOv2 weighting)."""

import math

import numpy as np
import pytest
import torch
from dist_utils import run_distributed

from pynsm.losses import IBOTPatchLoss, ibot_patch_loss


def reference(teacher, student, mask, center, t_teacher, t_student):
    """Token by token: -sum_k softmax((t - c)/T_t)_k log softmax(s/T_s)_k,
    averaged over the masked tokens of each image, then over images."""
    teacher, student, center = teacher.double(), student.double(), center.double()
    positions = mask.reshape(mask.shape[0], -1).nonzero().tolist()
    per_image = [[] for _ in range(mask.shape[0])]
    for row, (image, _) in enumerate(positions):
        logits_t = [
            (teacher[row, k] - center[k]) / t_teacher for k in range(teacher.shape[1])
        ]
        top = max(logits_t)
        z_t = sum(math.exp(v - top) for v in logits_t)
        logits_s = [student[row, k] / t_student for k in range(student.shape[1])]
        top_s = max(logits_s)
        log_z_s = top_s + math.log(sum(math.exp(v - top_s) for v in logits_s))
        ce = -sum(
            math.exp(lt - top) / z_t * (ls - log_z_s)
            for lt, ls in zip(logits_t, logits_s)
        )
        per_image[image].append(float(ce))
    return sum(sum(v) / max(1, len(v)) for v in per_image) / mask.shape[0]


def _inputs(seed=0, k=12, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, 4, 4, generator=g) < 0.4
    mask[2] = False  # an image without masked tokens weighs zero
    n = int(mask.sum())
    return (
        torch.randn(n, k, generator=g) * scale,
        torch.randn(n, k, generator=g) * scale,
        mask,
    )


@pytest.mark.parametrize(
    ("t_teacher", "t_student"), [(0.04, 0.1), (1.0, 2.0), (1e-3, 1e-3)]
)
def test_matches_formula_with_centre(t_teacher, t_student):
    teacher, student, mask = _inputs()
    center = torch.randn(12)
    value = ibot_patch_loss(teacher, student, mask, center, t_teacher, t_student)
    expected = reference(teacher, student, mask, center, t_teacher, t_student)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_module_centres_with_moving_average_and_schedule_override():
    teacher, student, mask = _inputs()
    loss_fn = IBOTPatchLoss(output_dim=12, teacher_temp=0.07, center_momentum=0.8)
    first = loss_fn(teacher, student, mask)
    assert first.item() == pytest.approx(
        reference(teacher, student, mask, torch.zeros(12), 0.07, 0.1), rel=1e-5
    )
    center = 0.2 * teacher.double().mean(0)
    torch.testing.assert_close(loss_fn.center[0].double(), center, rtol=1e-6, atol=1e-7)
    second = loss_fn(teacher, student, mask, teacher_temp=0.5)  # per-call temperature
    assert second.item() == pytest.approx(
        reference(teacher, student, mask, center.float(), 0.5, 0.1), rel=1e-5
    )
    assert set(loss_fn.state_dict()) == {"center"}


def test_gradient_reaches_only_the_student_and_is_finite_at_extreme_scales():
    teacher, student, mask = _inputs(scale=1e4)
    teacher.requires_grad_()
    student.requires_grad_()
    loss = IBOTPatchLoss(output_dim=12, teacher_temp=1e-3, student_temp=1e-3)(
        teacher, student, mask
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None


def test_low_precision_inputs_are_computed_in_float32():
    teacher, student, mask = _inputs()
    value = ibot_patch_loss(teacher.bfloat16(), student.bfloat16(), mask)
    expected = ibot_patch_loss(
        teacher.bfloat16().float(), student.bfloat16().float(), mask
    )
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected)


def test_defaults_and_integral_arguments():
    loss_fn = IBOTPatchLoss()
    assert (loss_fn.output_dim, loss_fn.teacher_temp, loss_fn.student_temp) == (
        65536,
        0.04,
        0.1,
    )
    assert (loss_fn.center_mode, loss_fn.center_momentum) == ("mean", 0.9)
    assert IBOTPatchLoss(output_dim=np.int64(8)).center.shape == (1, 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"output_dim": 0}, ValueError, "output_dim"),
        ({"output_dim": 2.0}, TypeError, "output_dim"),
        ({"teacher_temp": 0.0}, ValueError, "teacher_temp"),
        ({"student_temp": -1.0}, ValueError, "student_temp"),
        ({"center_mode": "median"}, ValueError, "center_mode"),
        ({"center_momentum": 1.5}, ValueError, "center_momentum"),
    ],
)
def test_invalid_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        IBOTPatchLoss(**kwargs)


def test_invalid_inputs():
    teacher, student, mask = _inputs()
    loss_fn = IBOTPatchLoss(output_dim=12)
    with pytest.raises(ValueError, match="rows"):
        loss_fn(teacher[1:], student[1:], mask)
    with pytest.raises(ValueError, match="same|shape"):
        loss_fn(teacher, student[:, :5], mask)
    with pytest.raises(ValueError, match="boolean"):
        loss_fn(teacher, student, mask.float())
    with pytest.raises(ValueError, match="output_dim"):
        IBOTPatchLoss(output_dim=8)(teacher, student, mask)


def _distributed_centre(rank, world_size):
    teacher = torch.full((2, 4), float(rank))  # per-process means 0 and 1
    mask = torch.tensor([[[True, True]]])
    loss_fn = IBOTPatchLoss(output_dim=4, center_momentum=0.5)
    loss_fn(teacher, torch.randn(2, 4), mask)
    return loss_fn.center


def test_centre_is_averaged_over_processes():
    for center in run_distributed(_distributed_centre, 2):
        torch.testing.assert_close(center, torch.full((1, 4), 0.25))


def test_non_finite_teacher_batch_leaves_the_centre():
    teacher, student, mask = _inputs()
    loss_fn = IBOTPatchLoss(output_dim=12)
    loss_fn(teacher, student, mask)
    center = loss_fn.center.clone()
    bad = teacher.clone()
    bad[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="IBOTPatchLoss centre"):
        loss_fn(bad, student, mask)
    assert torch.equal(loss_fn.center, center)
    value = loss_fn(teacher, student, mask)
    expected = reference(teacher, student, mask, center[0], 0.04, 0.1)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def _distributed_non_finite_centre(rank, world_size):
    mask = torch.tensor([[[True, True]]])
    loss_fn = IBOTPatchLoss(output_dim=4, center_momentum=0.5)
    loss_fn(torch.full((2, 4), float(rank)), torch.randn(2, 4), mask)
    teacher = torch.full((2, 4), float("nan") if rank == 0 else 1.0)
    with pytest.warns(RuntimeWarning, match="IBOTPatchLoss centre"):
        loss_fn(teacher, torch.randn(2, 4), mask)
    return loss_fn.center


def test_non_finite_batch_on_one_process_is_skipped_by_all():
    for center in run_distributed(_distributed_non_finite_centre, 2):
        torch.testing.assert_close(center, torch.full((1, 4), 0.25))
