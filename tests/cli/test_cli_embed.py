"""``pynsm embed``: features of a trained model round trip; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli_helpers import one_line_error

from pynsm import cli
from pynsm.data import load_npz
from pynsm.train import load_checkpoint, save_checkpoint

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_npz):
    folder = tmp_path_factory.mktemp("run") / "ckpt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = [
            "train",
            "--dataset",
            small_npz,
            "--epochs",
            "1",
            "--no-progress",
            "--checkpoint-dir",
            str(folder),
        ]
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return folder


def test_embed_round_trip(trained, small_npz, tmp_path):
    out = tmp_path / "features.npz"
    assert cli.main(["embed", "--checkpoint-dir", str(trained), "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as arrays:  # plain arrays, no pickles
        assert sorted(arrays.files) == [
            "test_features",
            "test_labels",
            "train_features",
            "train_labels",
        ]
        got = {name: arrays[name] for name in arrays.files}
    assert got["train_features"].dtype == np.float32
    assert got["train_labels"].dtype == np.int64
    # the same split, and the features of the saved weights
    train, test = load_npz(small_npz)
    assert np.array_equal(got["train_labels"], train.tensors[1].numpy())
    assert np.array_equal(got["test_labels"], test.tensors[1].numpy())
    task = cli.MODELS["supervised-sm"].build(1, 8, 10)
    task.load_state_dict(load_checkpoint(trained / "last.pt")["model"])
    task.eval()
    with torch.no_grad():
        expected = task.embed(test.tensors[0]).flatten(1).numpy()
    assert got["test_features"].shape == expected.shape
    np.testing.assert_allclose(got["test_features"], expected, rtol=1e-5, atol=1e-6)
    assert len(got["train_features"]) == len(train)


def test_embed_errors_are_one_line_exit_2(trained, tmp_path, capsys):
    out = str(tmp_path / "f.npz")

    def refused(argv, match):
        assert cli.main(argv) == 2
        one_line_error(capsys.readouterr().err, match)
        assert not (tmp_path / "f.npz").exists()

    refused(
        ["embed", "--checkpoint-dir", str(tmp_path), "--out", out], "no checkpoint at"
    )
    refused(
        ["embed", "--checkpoint-dir", str(trained), "--out", str(tmp_path)],
        "must name a .npz file",
    )
    # a pynsm checkpoint not written by `pynsm train`
    foreign = tmp_path / "foreign"
    save_checkpoint({"model": {"w": torch.ones(2)}}, foreign / "last.pt")
    refused(
        ["embed", "--checkpoint-dir", str(foreign), "--out", out],
        "not written by 'pynsm train",
    )
    # not a checkpoint at all
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "last.pt").write_bytes(b"\x00" * 64)
    refused(
        ["embed", "--checkpoint-dir", str(junk), "--out", out],
        "not a readable checkpoint",
    )
    # a dataset of another image size
    other = tmp_path / "other.npz"
    np.savez(other, images=np.random.rand(40, 10, 10), labels=np.arange(40) % 2)
    refused(
        [
            "embed",
            "--checkpoint-dir",
            str(trained),
            "--out",
            out,
            "--dataset",
            str(other),
        ],
        "was trained on [1, 8, 8]",
    )
    # more classes than the model was trained with
    many = tmp_path / "many.npz"
    np.savez(many, images=np.random.rand(60, 8, 8), labels=np.arange(60) % 12)
    refused(
        [
            "embed",
            "--checkpoint-dir",
            str(trained),
            "--out",
            out,
            "--dataset",
            str(many),
        ],
        "has 12 classes",
    )
