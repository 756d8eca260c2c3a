"""``--dataset`` names, ``--data-dir`` and ``--download``: standard splits, recipes.

Datasets are small files the tests write in the official formats (IDX in
torchvision's layout, image folders); real MNIST is used when
``tests/fetch_mnist.sh`` has fetched it and skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from _cli_helpers import ROOT, one_line_error

from pynsm import cli
from pynsm.cli import train as cli_train
from pynsm.cli.args import parse_args
from pynsm.data import standard
from pynsm.data.idx import write_idx
from pynsm.train import load_checkpoint

sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
from _data_files import (  # noqa: E402
    MNIST_NAMES,
    write_image_folder,
    write_mnist_layout,
)

REAL_DATA = os.environ.get("PYNSM_TEST_DATA") or os.path.join(ROOT, ".data")


@pytest.fixture
def mnist_dir(tmp_path):
    """A tiny MNIST (60 train / 20 test, 28x28) in torchvision's layout."""
    write_mnist_layout(str(tmp_path / "data"), n_train=60, n_test=20)
    return str(tmp_path / "data")


def test_train_and_embed_on_a_standard_split(tmp_path, mnist_dir, small_npz, capsys):
    report, checkpoints = tmp_path / "r.json", tmp_path / "ck"
    argv = [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        mnist_dir,
        "--epochs",
        "2",  # the large supervised-sm recipe: stroke detectors, then its head
        "--no-progress",
        "--json",
        str(report),
        "--checkpoint-dir",
        str(checkpoints),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "supervised-sm (large recipe) on mnist (60 train / 20 test)" in out
    assert "evaluated on the standard test split, 20 images" in out
    result = json.loads(report.read_text())
    assert {
        k: result[k]
        for k in (
            "dataset",
            "recipe",
            "split",
            "train_size",
            "test_size",
            "image_shape",
            "num_classes",
        )
    } == {
        "dataset": "mnist",
        "recipe": "large",
        "split": "standard",
        "train_size": 60,
        "test_size": 20,
        "image_shape": [1, 28, 28],
        "num_classes": 10,
    }
    meta = load_checkpoint(str(checkpoints / "last.pt"))["metadata"]
    assert meta["recipe"] == "large" and meta["dataset"] == "mnist"
    assert meta["data_dir"] == os.path.abspath(mnist_dir)
    assert meta["split"] == "standard"
    # embed finds the data again through the checkpoint, and the same recipe
    out_file = tmp_path / "features.npz"
    argv = ["embed", "--checkpoint-dir", str(checkpoints), "--out", str(out_file)]
    assert cli.main(argv) == 0
    with np.load(out_file) as arrays:
        assert arrays["train_features"].shape[0] == 60
        assert arrays["test_labels"].shape == (20,)
    capsys.readouterr()
    # 8x8 images get the other recipe: refused before any work
    other = tmp_path / "other.npz"
    argv += ["--out", str(other), "--dataset", small_npz]
    assert cli.main(argv) == 2
    one_line_error(capsys.readouterr().err, "'large' recipe")
    assert not other.exists()


def test_train_subset_keeps_the_test_split(mnist_dir):
    args = parse_args(
        ["train", "--dataset", "mnist", "--data-dir", mnist_dir, "--train-subset", "30"]
    )
    plan = cli_train.make_plan(args, torch.device("cpu"))
    assert (len(plan.train_set), len(plan.test_set)) == (30, 20)
    assert plan.split == "standard" and plan.recipe == "large"


def test_image_folder_with_workers(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = write_image_folder(
        str(tmp_path / "pics"),
        ("ant", "bee", "cow"),
        per_class=8,
        size=(12, 12),
        mode="RGB",
    )
    report = tmp_path / "r.json"
    argv = [
        "train",
        "--model",
        "sm",
        "--dataset",
        root,
        "--epochs",
        "1",
        "--num-workers",
        "1",
        "--no-progress",
        "--json",
        str(report),
    ]
    assert cli.main(argv) == 0
    result = json.loads(report.read_text())
    assert result["image_shape"] == [3, 12, 12] and result["split"] == "standard"
    assert (result["train_size"], result["test_size"]) == (24, 24)
    assert result["recipe"] == "small" and result["num_classes"] == 3
    assert "evaluated on the standard test split, 24 images" in capsys.readouterr().out


def _damage(kind, tmp_path, mnist_dir):
    """Apply one kind of bad input; returns the --dataset/--data-dir flags."""
    raw = os.path.join(mnist_dir, "MNIST", "raw")
    flags = ["--dataset", "mnist", "--data-dir", mnist_dir]
    if kind == "offline":
        return ["--dataset", "fashion-mnist", "--data-dir", mnist_dir]
    if kind == "data_dir_file":
        path = tmp_path / "afile"
        path.write_text("x")
        return ["--dataset", "mnist", "--data-dir", str(path)]
    if kind == "truncated":
        with open(os.path.join(raw, MNIST_NAMES["train"][0]), "r+b") as handle:
            handle.truncate(16 + 784 * 10)
    elif kind == "magic":
        with open(os.path.join(raw, MNIST_NAMES["test"][1]), "r+b") as handle:
            handle.write(b"\x08\x01\x00\x00")  # bytes swapped
    elif kind == "labels":
        write_idx(os.path.join(raw, MNIST_NAMES["test"][1]), np.full(20, 12, np.uint8))
    elif kind in ("one_class", "unreadable", "other_size", "cut_image"):
        pytest.importorskip("PIL")
        from PIL import Image

        classes = ("a",) if kind == "one_class" else ("a", "b")
        root = write_image_folder(str(tmp_path / "pics"), classes)
        if kind == "unreadable":
            (tmp_path / "pics" / "test" / "b" / "x.jpg").write_bytes(b"\xff\xd8junk")
        if kind == "other_size":
            Image.new("L", (9, 9)).save(tmp_path / "pics" / "train" / "a" / "9.png")
        if kind == "cut_image":
            path = tmp_path / "pics" / "train" / "b" / "1.png"
            path.write_bytes(path.read_bytes()[:60])  # the header survives
        return ["--dataset", root]
    elif kind == "float64":
        images = np.zeros((8, 6, 6))
        images[0, 0, 0] = 1e39
        np.savez(tmp_path / "big.npz", images=images, labels=np.arange(8) % 2)
        return ["--dataset", str(tmp_path / "big.npz")]
    return flags


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("offline", "fashion-mnist: missing train-images-idx3-ubyte[.gz]"),
        ("data_dir_file", "is a file, not a directory"),
        ("truncated", "truncated"),
        ("magic", "wrong magic number"),
        ("labels", "label 12 out of range 0..9"),
        ("one_class", "at least 2 class"),
        ("unreadable", "cannot read image"),
        ("other_size", "images differ in size"),
        ("cut_image", "cannot decode image"),
        ("float64", "pixel values reach 1e+39"),
    ],
)
def test_bad_data_one_line_exit_2_nothing_written(
    kind, match, tmp_path, mnist_dir, capsys, monkeypatch
):
    monkeypatch.setattr(cli_train, "fit", _refuse)
    flags = _damage(kind, tmp_path, mnist_dir)
    out = tmp_path / "out"
    argv = [
        "train",
        *flags,
        "--no-progress",
        "--json",
        str(out / "r.json"),
        "--checkpoint-dir",
        str(out / "ck"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning before the line
        assert cli.main(argv) == 2
    captured = capsys.readouterr()
    one_line_error(captured.err, match)
    assert captured.out == "" and not out.exists()
    if kind == "offline":
        assert os.path.join(mnist_dir, "FashionMNIST", "raw") in captured.err
        assert "--download" in captured.err


def _refuse(*args, **kwargs):
    raise AssertionError("bad data reached training")


def test_download_checksum_mismatch_exit_2(tmp_path, capsys, monkeypatch):
    # a local server whose file is not the one the checksum names
    import http.server
    import threading

    body = b"\x1f\x8b not MNIST"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        spec = dataclasses.replace(standard.STANDARD_DATASETS["kmnist"], urls=(url,))
        monkeypatch.setitem(standard.STANDARD_DATASETS, "kmnist", spec)
        monkeypatch.setattr(cli_train, "fit", _refuse)
        data = tmp_path / "data"
        argv = [
            "train",
            "--dataset",
            "kmnist",
            "--data-dir",
            str(data),
            "--download",
            "--no-progress",
        ]
        assert cli.main(argv) == 2
    finally:
        httpd.shutdown()
        httpd.server_close()
    one_line_error(capsys.readouterr().err, "checksum mismatch")
    assert hashlib.md5(body).hexdigest() not in spec.checksums.values()
    assert os.listdir(data / "KMNIST" / "raw") == []


@pytest.mark.skipif(
    not os.path.isfile(
        os.path.join(REAL_DATA, "MNIST", "raw", "t10k-labels-idx1-ubyte")
    ),
    reason="no real MNIST (run: bash tests/fetch_mnist.sh)",
)
def test_real_mnist_plan_uses_the_standard_test_set():
    args = parse_args(["train", "--dataset", "mnist", "--data-dir", REAL_DATA])
    plan = cli_train.make_plan(args, torch.device("cpu"))
    assert (len(plan.train_set), len(plan.test_set)) == (60000, 10000)
    assert plan.split == "standard" and plan.recipe == "large"
    assert (plan.info.channels, plan.info.height, plan.info.width) == (1, 28, 28)
    assert plan.info.num_classes == 10


def test_long_tail_trains_on_power_law_counts_and_embed_follows(
    tmp_path, mnist_dir, capsys
):
    from pynsm.data import long_tailed_counts

    report, checkpoints = tmp_path / "r.json", tmp_path / "ck"
    argv = ["train", "--model", "sm", "--dataset", "mnist", "--data-dir", mnist_dir]
    argv += ["--epochs", "1", "--long-tail", "4", "--no-progress"]
    argv += ["--json", str(report), "--checkpoint-dir", str(checkpoints)]
    assert cli.main(argv) == 0
    expected = long_tailed_counts([6] * 10, imbalance=4).tolist()  # 6 per class
    out = capsys.readouterr().out
    line = ", ".join(map(str, expected))
    assert f"trained on a long tail (4:1), images per class: {line}" in out
    result = json.loads(report.read_text())
    assert result["long_tail"] == 4.0 and result["train_class_counts"] == expected
    assert result["train_size"] == sum(expected) and result["test_size"] == 20
    # embed rebuilds the same long-tailed training set from the checkpoint
    out_file = tmp_path / "features.npz"
    argv = ["embed", "--checkpoint-dir", str(checkpoints), "--out", str(out_file)]
    assert cli.main(argv) == 0
    with np.load(out_file) as arrays:
        assert np.bincount(arrays["train_labels"]).tolist() == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [("0.5", "--long-tail must be >= 1"), ("7", "needs a class of at least 7")],
)
def test_bad_long_tails_are_refused(tmp_path, mnist_dir, capsys, value, match):
    report = tmp_path / "r.json"
    argv = ["train", "--dataset", "mnist", "--data-dir", mnist_dir, "--epochs", "1"]
    argv += ["--long-tail", value, "--no-progress", "--json", str(report)]
    assert cli.main(argv) == 2
    one_line_error(capsys.readouterr().err, match)
    assert not report.exists()


def test_ssl_recipes_scale_epochs_with_the_training_set(mnist_dir):
    args = parse_args(["train", "--model", "msn", "--dataset", "mnist"])
    args.data_dir = mnist_dir
    plan = cli_train.make_plan(args, torch.device("cpu"))
    assert plan.recipe == "large" and len(plan.train_set) == 60
    assert plan.epochs == plan.spec.default_epochs(60) == 5000  # 300,000 images
    args.epochs = 2
    assert cli_train.make_plan(args, torch.device("cpu")).epochs == 2


def test_a_layerwise_recipe_needs_an_epoch_for_its_top_layer(mnist_dir, capsys):
    argv = ["train", "--dataset", "mnist", "--data-dir", mnist_dir, "--epochs", "1"]
    assert cli.main([*argv, "--no-progress"]) == 2
    one_line_error(
        capsys.readouterr().err,
        "--epochs 1: --model supervised-sm trains its layers one after the other",
    )
