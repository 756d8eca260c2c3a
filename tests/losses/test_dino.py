"""DINOLoss against a float64 transcription of the DINO paper (Alg. 1): pairs of
different views, teacher-temperature warm-up, centring and its moving average."""

import inspect

import pytest
import torch

from pynsm.losses import DINOLoss


def reference_dino(teacher, student, center, teacher_temp, student_temp=0.1):
    total, terms = 0.0, 0
    for t, t_out in enumerate(teacher):
        p_t = torch.softmax((t_out.double() - center.double()) / teacher_temp, dim=-1)
        for s, s_out in enumerate(student):
            if s == t:
                continue
            p_s = torch.softmax(s_out.double() / student_temp, dim=-1)
            total = total - (p_t * torch.log(p_s)).sum(dim=-1).mean()
            terms += 1
    return total / terms


def _views(n, b=6, k=20, dtype=torch.float64):
    return [torch.randn(b, k, dtype=dtype, requires_grad=True) for _ in range(n)]


@pytest.mark.parametrize(("n_teacher", "n_student"), [(2, 2), (2, 6), (1, 3)])
def test_value_and_gradients_equal_float64_formula(n_teacher, n_student):
    teacher, student = _views(n_teacher), _views(n_student)
    loss_fn = DINOLoss(
        output_dim=20, warmup_teacher_temp_epochs=0, teacher_temp=0.05, student_temp=0.2
    ).double()
    loss_fn.center.copy_(torch.randn(1, 1, 20))
    center = loss_fn.center.clone()
    loss = loss_fn(teacher, student, epoch=3)
    expected = reference_dino(teacher, student, center[0, 0], 0.05, 0.2)
    torch.testing.assert_close(loss, expected)
    # with one teacher view, student view 0 pairs with nothing: no gradient
    got = torch.autograd.grad(loss, student + teacher, allow_unused=True)
    want = torch.autograd.grad(expected, student + teacher, allow_unused=True)
    for g, w, x in zip(got, want, student + teacher):
        zero = torch.zeros_like(x)
        torch.testing.assert_close(zero if g is None else g, zero if w is None else w)


def test_teacher_temperature_warmup_is_linear():
    loss_fn = DINOLoss(
        output_dim=4,
        warmup_teacher_temp=0.02,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=6,
    )
    expected = torch.linspace(0.02, 0.07, 6, dtype=torch.float64).tolist()
    got = [loss_fn.teacher_temperature(e) for e in range(6)]
    assert got == pytest.approx(expected)
    assert loss_fn.teacher_temperature(6) == loss_fn.teacher_temperature(100) == 0.07
    # the temperature actually used by forward
    teacher, student = _views(2, k=4), _views(2, k=4)
    for epoch in (0, 3, 9):
        fresh = DINOLoss(
            output_dim=4,
            warmup_teacher_temp=0.02,
            teacher_temp=0.07,
            warmup_teacher_temp_epochs=6,
        ).double()
        temp = fresh.teacher_temperature(epoch)
        torch.testing.assert_close(
            fresh(teacher, student, epoch=epoch),
            reference_dino(teacher, student, torch.zeros(4), temp),
        )


def test_center_moving_average_and_use_in_next_call():
    loss_fn = DINOLoss(output_dim=20, center_momentum=0.8).double()
    teacher, student = _views(2), _views(3)
    loss_fn(teacher, student, epoch=0)
    batch_mean = torch.stack(teacher).detach().mean(dim=(0, 1))
    torch.testing.assert_close(loss_fn.center[0, 0], 0.2 * batch_mean)
    center = loss_fn.center[0, 0].clone()
    second = loss_fn(teacher, student, epoch=0)
    torch.testing.assert_close(second, reference_dino(teacher, student, center, 0.04))
    torch.testing.assert_close(loss_fn.center[0, 0], 0.8 * center + 0.2 * batch_mean)
    # the public update on stacked [V, B, K] outputs
    loss_fn.update_center(torch.ones(2, 5, 20, dtype=torch.float64))
    torch.testing.assert_close(
        loss_fn.center[0, 0], 0.8 * (0.8 * center + 0.2 * batch_mean) + 0.2
    )
    assert loss_fn.center.shape == (1, 1, 20)
    assert "center" in loss_fn.state_dict()


def test_documented_defaults():
    params = inspect.signature(DINOLoss).parameters
    assert {k: v.default for k, v in params.items()} == {
        "output_dim": 65536,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 30,
        "student_temp": 0.1,
        "center_momentum": 0.9,
    }
    assert list(inspect.signature(DINOLoss.forward).parameters)[1:] == [
        "teacher_out",
        "student_out",
        "epoch",
    ]


def test_low_temperatures_float32_finite_and_accurate():
    teacher, student = _views(2, k=64), _views(4, k=64)
    teacher = [(t * 10).detach() for t in teacher]
    kwargs = {
        "output_dim": 64,
        "student_temp": 0.01,
        "teacher_temp": 0.01,
        "warmup_teacher_temp": 0.01,
    }
    expected = DINOLoss(**kwargs).double()(teacher, student, epoch=0)
    s32 = [s.detach().float().requires_grad_(True) for s in student]
    got = DINOLoss(**kwargs)([t.float() for t in teacher], s32, epoch=0)
    got.backward()
    assert torch.isfinite(got) and all(torch.isfinite(s.grad).all() for s in s32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-3)


def test_bfloat16_autocast_is_finite():
    features = [torch.randn(8, 16, requires_grad=True) for _ in range(4)]
    head = torch.randn(16, 32)
    loss_fn = DINOLoss(output_dim=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [f @ head for f in features]
        loss = loss_fn([o.detach() for o in outs[:2]], outs, epoch=0)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert loss_fn.center.dtype == torch.float32
    assert torch.isfinite(loss_fn.center).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"output_dim": 0}, "output_dim"),
        ({"warmup_teacher_temp": 0.0}, "warmup_teacher_temp"),
        ({"teacher_temp": 0.0}, "teacher_temp"),
        ({"student_temp": -1.0}, "student_temp"),
        ({"warmup_teacher_temp_epochs": -1}, "warmup_teacher_temp_epochs"),
        ({"center_momentum": 1.5}, "center_momentum"),
    ],
)
def test_invalid_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DINOLoss(**kwargs)


def test_invalid_inputs():
    loss_fn = DINOLoss(output_dim=8)
    with pytest.raises(ValueError, match="different views"):
        loss_fn([torch.randn(4, 8)], [torch.randn(4, 8)], epoch=0)
    with pytest.raises(ValueError, match="student_out"):
        loss_fn([torch.randn(4, 8)] * 2, [torch.randn(3, 8)] * 2, epoch=0)
    with pytest.raises(ValueError, match="output_dim"):
        loss_fn([torch.randn(4, 7)] * 2, [torch.randn(4, 7)] * 2, epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        loss_fn([torch.randn(4, 8)] * 2, [torch.randn(4, 8)] * 2, epoch=-1)


def _poisoned(views, bad):
    views = [v.detach().clone() for v in views]
    views[-1][2, 3] = bad
    return views


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_teacher_batch_leaves_the_centre(bad):
    loss_fn = DINOLoss(output_dim=20, center_momentum=0.8).double()
    teacher, student = _views(2), _views(3)
    loss_fn(teacher, student, epoch=0)
    center = loss_fn.center.clone()
    with pytest.warns(RuntimeWarning, match="DINOLoss centre"):
        loss_fn(_poisoned(teacher, bad), student, epoch=0)
    assert torch.equal(loss_fn.center, center)
    with pytest.warns(RuntimeWarning, match="DINOLoss centre"):
        loss_fn.update_center(torch.stack(_poisoned(teacher, bad)))
    assert torch.equal(loss_fn.center, center)
    # the next loss is finite: it is the one with the centre from before
    value = loss_fn(teacher, student, epoch=0)
    torch.testing.assert_close(
        value, reference_dino(teacher, student, center[0, 0], 0.04)
    )


def test_non_finite_teacher_batch_on_an_accelerator_keeps_the_centre(monkeypatch):
    # the device path (torch.where, no host sync and no warning), run on the CPU
    from pynsm.losses import _numerics

    monkeypatch.setattr(_numerics, "_read_on_host", lambda tensor: False)
    loss_fn = DINOLoss(output_dim=20).double()
    teacher, student = _views(2), _views(3)
    loss_fn(teacher, student, epoch=0)
    center = loss_fn.center.clone()
    loss_fn(_poisoned(teacher, float("nan")), student, epoch=0)
    assert torch.equal(loss_fn.center, center)
    loss_fn(teacher, student, epoch=0)
    batch_mean = torch.stack(teacher).detach().mean(dim=(0, 1))
    torch.testing.assert_close(
        loss_fn.center[0, 0], 0.9 * center[0, 0] + 0.1 * batch_mean
    )


def _distributed_non_finite_centre(rank, world_size):
    loss_fn = DINOLoss(output_dim=4, center_momentum=0.5)
    student = [torch.randn(2, 4) for _ in range(2)]
    loss_fn([torch.full((2, 4), float(rank))] * 2, student, epoch=0)
    kept = loss_fn.center.clone()
    # only rank 1 sees a bad batch: after the all-reduce both ranks skip alike
    bad = torch.full((2, 4), float("nan") if rank == 1 else 1.0)
    with pytest.warns(RuntimeWarning, match="DINOLoss centre"):
        loss_fn([bad, bad], student, epoch=0)
    return kept, loss_fn.center


def test_non_finite_batch_on_one_process_is_skipped_by_all():
    from dist_utils import run_distributed

    for kept, center in run_distributed(_distributed_non_finite_centre, 2):
        torch.testing.assert_close(kept, torch.full((1, 1, 4), 0.25))
        assert torch.equal(center, kept)
