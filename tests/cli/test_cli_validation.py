"""Everything is checked before any work: one line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from _cli_helpers import ROOT, one_line_error, subprocess_env

from pynsm import cli
from pynsm.cli import train as cli_train

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    # any of these cases reaching the Trainer is a failure of "validate first"
    def refuse(*args, **kwargs):
        raise AssertionError("validation let a bad input through to training")

    monkeypatch.setattr(cli_train, "fit", refuse)


def _one_line_exit_2(argv, capsys, match):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    one_line_error(captured.err, match)
    assert captured.err.startswith("pynsm: error: ") and captured.out == ""


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--model", "nope"], "invalid choice"),
        (["train", "--epochs", "-1"], "--epochs must be >= 0"),
        (["train", "--epochs", "two"], "--epochs must be an integer"),
        (["train", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "--batch-size", str(10**20)], "--batch-size must be <= 2147483647"),
        (["train", "--seed", str(10**20)], "--seed must be <= 4294967295"),
        (["train", "--seed", "-1"], "--seed must be >= 0"),
        (["train", "--lr", "fast"], "--lr must be a number"),
        (["train", "--lr", "nan"], "--lr must be a finite number"),
        (["train", "--lr", "inf"], "--lr must be a finite number"),
        (["train", "--lr", "0"], "--lr must be > 0"),
        (["train", "--lr=-1e-3"], "--lr must be > 0"),
        (["train", "--dataset", "missing.npz"], "does not exist"),
        (["train", "--dataset", "nope"], "is not a dataset name"),
        (["train", "--lr", "1e300"], "--lr must be <="),
        (["train", "--resume"], "--resume needs --checkpoint-dir"),
        (["train", "--device", "tpu:0"], "--device"),
        (["train", "--unknown"], "unrecognized arguments"),
        (["embed", "--out", "x.npz"], "--checkpoint-dir"),
        ([], "required"),
    ],
)
def test_bad_flags(argv, match, capsys):
    _one_line_exit_2(argv, capsys, match)


def _images(n=40, side=8):
    rng = np.random.default_rng(0)
    return rng.random((n, side, side)).astype(np.float32)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": _images(), "labels": np.zeros(40, int)}, "1 class(es)"),
        ({"images": _images(side=2), "labels": np.arange(40) % 2}, "at least 3x3"),
        (
            {"images": np.zeros((40, 8, 8, 3), np.uint8), "labels": np.arange(40) % 2},
            "channels-last",
        ),
        (
            {"images": _images() * 3e38, "labels": np.arange(40) % 2},
            "rescale the images",
        ),
        (
            {"images": np.full((40, 8, 8), np.nan), "labels": np.arange(40) % 2},
            "NaN",
        ),
        (
            {"images": np.zeros((0, 8, 8)), "labels": np.zeros(0, int)},
            "at least 2",
        ),
        ({"images": _images(), "labels": np.arange(40) / 2}, "integers"),
        ({"images": _images()}, "missing array"),
    ],
)
def test_bad_datasets_write_nothing(arrays, match, tmp_path, capsys):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    out = tmp_path / "out"
    argv = [
        "train",
        "--dataset",
        str(path),
        "--checkpoint-dir",
        str(out / "ckpt"),
        "--json",
        str(out / "report.json"),
    ]
    _one_line_exit_2(argv, capsys, match)
    assert not out.exists()


def test_npy_renamed_npz(tmp_path, capsys):
    path = tmp_path / "images.npz"
    with open(path, "wb") as handle:
        np.save(handle, _images())
    _one_line_exit_2(["train", "--dataset", str(path)], capsys, "np.savez")


def test_square_images_for_ssl_models(tmp_path, capsys):
    path = tmp_path / "wide.npz"
    np.savez(path, images=np.random.rand(40, 8, 12), labels=np.arange(40) % 2)
    _one_line_exit_2(
        ["train", "--model", "swav", "--dataset", str(path)], capsys, "square images"
    )


def test_output_paths_are_probed_first(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    _one_line_exit_2(["train", "--json", str(folder)], capsys, "is a directory")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _one_line_exit_2(
        ["train", "--json", str(a_file / "report.json")], capsys, "not a directory"
    )
    _one_line_exit_2(
        ["train", "--checkpoint-dir", str(a_file)], capsys, "not a directory"
    )
    # the JSON path is refused before the checkpoint folder is created
    ckpt = tmp_path / "ckpt"
    _one_line_exit_2(
        ["train", "--json", str(folder), "--checkpoint-dir", str(ckpt)],
        capsys,
        "is a directory",
    )
    assert not ckpt.exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into read-only folders",
)
def test_read_only_folders(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _one_line_exit_2(
            ["train", "--json", str(locked / "r.json")], capsys, "cannot write"
        )
        _one_line_exit_2(
            ["train", "--checkpoint-dir", str(locked)], capsys, "cannot write"
        )
    finally:
        locked.chmod(0o700)


def test_resume_needs_a_checkpoint_that_reads(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", "--checkpoint-dir", str(empty), "--resume"]
    _one_line_exit_2(argv, capsys, "nothing to resume")
    (empty / "last.pt").write_bytes(b"garbage")
    _one_line_exit_2(
        ["train", "--checkpoint-dir", str(empty), "--resume"],
        capsys,
        "not a readable checkpoint",
    )


def test_python_dash_m_bad_input_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "pynsm", "train", "--lr", "inf"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_unwritable_folder_as_root_sees_it(tmp_path, capsys, monkeypatch):
    # root ignores permission bits; a read-only mount still refuses the probe file
    import errno

    from pynsm.cli import args as cli_args

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cli_args.tempfile, "TemporaryFile", read_only)
    _one_line_exit_2(
        ["train", "--checkpoint-dir", str(tmp_path / "c")],
        capsys,
        "cannot write in",
    )


def test_a_model_that_does_not_fit_the_images_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    # a recipe that under-states its kernel: the trial embedding catches the misfit
    spec = cli.MODELS["supervised-sm"]
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    monkeypatch.setitem(
        cli.MODELS, "supervised-sm", cli.ModelSpec(**{**fields, "min_image_size": 1})
    )
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.random.rand(40, 2, 2), labels=np.arange(40) % 2)
    out = tmp_path / "out"
    argv = ["train", "--dataset", str(path), "--checkpoint-dir", str(out)]
    _one_line_exit_2(argv, capsys, "does not fit 1x2x2 images")
    assert not out.exists()
