"""Every integer argument of every loss takes any integral scalar (issue 10 item 2).

NumPy integers and 0-d integer tensors (what configs and sweeps hand over) behave
exactly like Python ints and are stored as Python ints; bools and floats are a
TypeError naming the argument, out-of-range values a ValueError.
"""

import numpy as np
import pytest
import torch

import pynsm.losses as L

# (factory taking the integer, attribute holding it, a valid value, an invalid one)
CASES = {
    "DINOLoss.output_dim": (lambda n: L.DINOLoss(output_dim=n), "output_dim", 8, 0),
    "DINOLoss.warmup_teacher_temp_epochs": (
        lambda n: L.DINOLoss(output_dim=4, warmup_teacher_temp_epochs=n),
        "warmup_teacher_temp_epochs",
        3,
        -1,
    ),
    "MSNLoss.sinkhorn_iterations": (
        lambda n: L.MSNLoss(sinkhorn_iterations=n),
        "sinkhorn_iterations",
        2,
        -1,
    ),
    "PMSNLoss.sinkhorn_iterations": (
        lambda n: L.PMSNLoss(sinkhorn_iterations=n),
        "sinkhorn_iterations",
        2,
        -1,
    ),
    "PMSNCustomLoss.sinkhorn_iterations": (
        lambda n: L.PMSNCustomLoss(lambda p: p, sinkhorn_iterations=n),
        "sinkhorn_iterations",
        2,
        -1,
    ),
    "SwaVLoss.sinkhorn_iterations": (
        lambda n: L.SwaVLoss(sinkhorn_iterations=n),
        "sinkhorn_iterations",
        2,
        -1,
    ),
    "MemoryBankModule.size": (lambda n: L.MemoryBankModule(size=n), "size", 8, -1),
    "NTXentLoss.memory_bank_size": (
        lambda n: L.NTXentLoss(memory_bank_size=n),
        "size",
        8,
        -1,
    ),
    "CO2Regularizer.memory_bank_size": (
        lambda n: L.CO2Regularizer(memory_bank_size=n),
        "size",
        8,
        -1,
    ),
    "NegativeCosineSimilarity.dim": (
        lambda n: L.NegativeCosineSimilarity(dim=n),
        "dim",
        1,
        None,
    ),
    "IBOTPatchLoss.output_dim": (
        lambda n: L.IBOTPatchLoss(output_dim=n),
        "output_dim",
        8,
        0,
    ),
    "Whitening2d.num_features": (
        lambda n: L.Whitening2d(num_features=n),
        "num_features",
        4,
        0,
    ),
    "WMSELoss.w_iter": (lambda n: L.WMSELoss(w_iter=n), "w_iter", 2, 0),
    "WMSELoss.w_size": (
        lambda n: L.WMSELoss(embedding_dim=4, w_size=n),
        "w_size",
        8,
        7,
    ),
    "WMSELoss.num_samples": (
        lambda n: L.WMSELoss(num_samples=n),
        "num_samples",
        3,
        1,
    ),
}


def _kinds(value):
    return [np.int64(value), np.int32(value), np.uint8(value), torch.tensor(value)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_integral_scalars_are_ints(case):
    factory, attribute, valid, _ = CASES[case]
    expected = getattr(factory(valid), attribute)
    for value in _kinds(valid):
        stored = getattr(factory(value), attribute)
        assert stored == expected
        assert type(stored) is type(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_type_and_wrong_value(case):
    factory, _, valid, invalid = CASES[case]
    name = case.split(".")[1]
    name = "size" if "memory_bank" in name else name
    for wrong in (True, float(valid), "3"):
        with pytest.raises(TypeError, match=name):
            factory(wrong)
    if invalid is not None:
        with pytest.raises(ValueError, match=name):
            factory(np.int64(invalid))


def test_functions_and_forward_arguments():
    eight = np.int64(8)
    assert L.power_law_distribution(eight, 1.0).shape == (8,)
    with pytest.raises(TypeError, match="size"):
        L.power_law_distribution(8.0, 1.0)
    scores = torch.randn(6, 3)
    torch.testing.assert_close(
        L.sinkhorn_swav(scores, iterations=np.int64(3)), L.sinkhorn_swav(scores, 3)
    )
    probs = torch.softmax(scores, dim=1)
    torch.testing.assert_close(
        L.sinkhorn_msn(probs, iterations=np.int32(2)), L.sinkhorn_msn(probs, 2)
    )
    with pytest.raises(TypeError, match="iterations"):
        L.sinkhorn_swav(scores, iterations=2.0)
    dino = L.DINOLoss(output_dim=4, warmup_teacher_temp_epochs=5)
    assert dino.teacher_temperature(np.int64(2)) == dino.teacher_temperature(2)
    views = [torch.randn(2, 4) for _ in range(2)]
    torch.testing.assert_close(
        dino(views, views, epoch=np.int64(1)),
        L.DINOLoss(output_dim=4, warmup_teacher_temp_epochs=5)(views, views, epoch=1),
    )
    vicregl = L.VICRegLLoss(num_matches=(np.int64(3), np.int32(-1)))
    assert vicregl.num_matches == (3, -1)
    with pytest.raises(TypeError, match="num_matches"):
        L.VICRegLLoss(num_matches=(3.0, 2))
    x = torch.randn(3, 4)
    torch.testing.assert_close(
        L.negative_cosine_similarity(x, x, dim=np.int64(1)),
        L.negative_cosine_similarity(x, x, dim=1),
    )
    assert L.MemoryBankModule(size=(np.int64(4), np.int32(3))).bank.shape == (4, 3)
