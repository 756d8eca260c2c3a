"""Model recipes of the ``pynsm`` command: how each ``--model`` is built and trained.

One :class:`ModelSpec` per model, in :data:`MODELS`. A recipe names everything the
command needs to train the model and read it out; the build function receives the
dataset's image shape and number of classes, so a checkpoint that records those
(plus the model name) is enough to rebuild the same network (``pynsm embed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["ModelSpec", "MODELS", "LARGE_MODELS", "select_recipe"]

#: ``build(channels, side, classes) -> task``: ``side`` is the image height.
BuildFn = Callable[[int, int, int], nn.Module]
#: ``scheduler(optimizer, epochs, steps_per_epoch) -> scheduler`` stepped every batch.
SchedulerFn = Callable[[torch.optim.Optimizer, int, int], Any]


@dataclass(frozen=True)
class ModelSpec:
    """How the command builds, trains and reads out one model.

    Attributes:
        build: ``build(channels, side, classes)`` returns the task to train (a
            module with ``training_loss(batch)`` and ``embed(x) -> [B, D]``).
        optimizer: Optimizer class, called as ``optimizer(params, lr=lr,
            **optimizer_kwargs)``.
        lr: Default learning rate (``--lr`` overrides it).
        epochs: Default number of epochs (``--epochs``).
        batch_size: Default global batch size (``--batch-size``).
        probe_c: Inverse L2 strength of the logistic-regression readouts.
        self_supervised: Trained without labels.
        cpu_threads: Torch threads on the CPU during the run (restored afterwards)
            unless the user set ``OMP_NUM_THREADS``; ``None`` keeps torch's choice.
        min_image_size: Smallest image height/width the model accepts (e.g. the
            kernel of a convolutional circuit).
        square_images: The model needs ``H == W``.
        optimizer_kwargs: Extra optimizer arguments (weight decay, momentum, ...).
        scheduler: Optional per-step learning-rate schedule,
            ``scheduler(optimizer, epochs, steps_per_epoch)``.
        grad_clip_norm: Clip the global gradient norm to this value.
        train_images: When set, the default training length in images seen: the
            default epochs are then ``max(epochs, ceil(train_images / N))`` for a
            training set of ``N`` images, so a smaller set (a long-tailed subset,
            ``--train-subset``) gets as many steps as the full one.
    """

    build: BuildFn
    optimizer: type[torch.optim.Optimizer]
    lr: float
    epochs: int
    batch_size: int
    probe_c: float
    self_supervised: bool
    cpu_threads: int | None = None
    min_image_size: int = 1
    square_images: bool = False
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scheduler: SchedulerFn | None = None
    grad_clip_norm: float | None = None
    train_images: int | None = None

    def default_epochs(self, num_train: int) -> int:
        """The epochs of a run on ``num_train`` images when ``--epochs`` is not given.

        Example:
            >>> spec = LARGE_MODELS["msn"]
            >>> spec.default_epochs(60_000), spec.default_epochs(8_396)
            (5, 36)
        """
        if self.train_images is None or num_train <= 0:
            return self.epochs
        return max(self.epochs, -(-self.train_images // num_train))


class _Scale(nn.Module):
    """Multiply by a constant (sets the scale the circuit sees, see below)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _circuit_encoder(channels: int, side: int, out_channels: int) -> nn.Module:
    """Encoder of the circuit recipes: a fixed random ReLU expansion, then `W`.

    Why (measured on digits, see docs/benchmarks.md): similarity matching makes
    the output's similarities copy the *linear* similarities of its input. Trained
    on raw 3x3 patches it therefore throws away the random nonlinear expansion
    that made the untrained convolutional features good, and with labels
    broadcast over positions its shared weights can only learn the class means of
    patches averaged over the image, which hardly differ between classes. So the
    circuit learns on a fixed expansion instead: frozen random 3x3 ReLU
    convolution (100 maps), max-pooled to a 3x3 grid (900 numbers for any image
    size), centred and scaled by a non-affine batch norm. Centring removes the
    mean image, whose eigenvalue would otherwise dwarf all others (the circuit
    then learns one direction); the scale puts the eigenvalues of the learnt `M`
    below 1, so the plain inner iteration (step 1) converges in 60 steps (it
    diverges when `lr * eig(M) > 2`), and it weighs images against one-hot
    labels (norm 1) 2.5 : 1.
    """
    width, grid = 100, 3
    conv = nn.Conv2d(channels, width, 3, bias=False)
    conv.weight.requires_grad_(False)  # a fixed expansion: not trained
    features = width * grid * grid
    return nn.Sequential(
        conv,
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(grid),
        nn.Flatten(),
        nn.BatchNorm1d(features, affine=False),
        _Scale(2.5 / features**0.5),
        nn.Linear(features, out_channels, bias=False),
    )


class _LabelReadout:
    """Readout of the supervised circuit: its reconstructed label input
    ``L^T M^{-1} y`` (:meth:`~pynsm.arch.SupervisedSimilarityMatching.decode_label`),
    ``[B, classes]``. A plain object, not a module: the circuit's weights stay
    registered once, under the task."""

    def __init__(self, circuit: nn.Module) -> None:
        self.circuit = circuit

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.circuit.decode_label(y)


class _InputReconstruction:
    """Readout of the unsupervised circuit: its reconstruction of its (expanded)
    input, ``W^T M^{-1} y`` [B, 900], the projection on the principal subspace the
    circuit learnt; it denoises the random features without whitening them."""

    def __init__(self, circuit: nn.Module) -> None:
        self.circuit = circuit

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weight = self.circuit.encoders[0][-1].weight  # [M, D]
            m_inverse = torch.linalg.pinv(self.circuit.competitor.weight)
            return y.flatten(1) @ m_inverse.T @ weight


def _supervised_sm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.arch import SupervisedSimilarityMatching
    from pynsm.train import CircuitTask

    # linear circuit, both encoders "weight"-regularised: similarity matching of
    # [expanded image; label], whose optimum reconstructs the label from the image
    # (reduced-rank regression); tau 0.5 (M learns at twice W's rate) gave 98% of
    # predict() where tau 0.1 gave 90-94%
    circuit = SupervisedSimilarityMatching(
        _circuit_encoder(channels, side, 100),
        num_classes=classes,
        out_channels=100,
        tau=0.5,
        # the plain steps, not the direct solve: measured on digits (60 epochs,
        # seed 0) the exact fixed points read 96.5 / 98.0 / 98.7% (1-shot /
        # 5-shot / all) and predict 97.8%, these 60 steps 97.4 / 98.9 / 99.1% and
        # 98.4%
        max_iterations=60,
        regularization=("weight", "weight"),
    )
    return CircuitTask(
        circuit, num_classes=classes, feature_pool=_LabelReadout(circuit)
    )


def _sm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.arch import SimilarityMatching
    from pynsm.train import CircuitTask

    # linear circuit with 20 outputs: learns the top principal subspace of the
    # expanded images; its reconstruction keeps 1-shot accuracy above the raw
    # expansion's
    circuit = SimilarityMatching(
        _circuit_encoder(channels, side, 20),
        out_channels=20,
        tau=0.5,
        # direct solve of the linear inner problem: the same readouts as 60 plain
        # steps on digits (71.8 / 89.8 / 98.4%), half the training time
        max_iterations=60,
        tol=1e-6,
        solver="accelerated",
    )
    return CircuitTask(circuit, feature_pool=_InputReconstruction(circuit))


def _msn(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import MSN

    return MSN(in_channels=channels, image_size=side)


def _pmsn(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import PMSN

    return PMSN(in_channels=channels, image_size=side)


def _swav(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.swav import SwaV

    return SwaV(in_channels=channels, image_size=side, queue_length=0)


def _large_view(side: int) -> int:
    # half the image side: a quarter of the convolutions (MNIST: 28 -> 14)
    return max(side // 2, 8)


def _msn_large(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import MSN

    return MSN(in_channels=channels, image_size=side, **_msn_large_kwargs(side))


def _pmsn_large(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import PMSN

    return PMSN(in_channels=channels, image_size=side, **_msn_large_kwargs(side))


def _msn_large_kwargs(side: int) -> dict[str, Any]:
    # 2x2 masked patches: a 7x7 grid on 14x14 views (the default 7x7 patches
    # would leave a 2x2 grid, where a 15% mask drops no patch most of the time)
    view = _large_view(side)
    return {"view_size": view, "patch_size": 2 if view % 2 == 0 else 1}


def _swav_large(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.swav import SwaV

    return SwaV(
        in_channels=channels,
        image_size=side,
        queue_length=0,
        view_size=_large_view(side),
    )


def _ssl_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # MSN, PMSN, SwaV: linear warm-up over 2 epochs (at most a tenth of the run),
    # so the first large updates do not scatter a fresh network's prototypes, then
    # cosine decay to zero, so a short run ends with settled features
    from pynsm.ssl.momentum import warmup_cosine

    total = max(epochs * steps_per_epoch, 1)
    warmup = min(2 * steps_per_epoch, total // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup)
    )


def _ssl_spec(
    build: BuildFn, epochs: int = 100, train_images: int | None = None
) -> ModelSpec:
    """The recipe MSN, PMSN and SwaV share (measured on digits, see
    docs/benchmarks.md): AdamW with weight decay, 100 epochs, warm-up then cosine."""
    return ModelSpec(
        build=build,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        epochs=epochs,
        train_images=train_images,
        batch_size=64,
        probe_c=1.0,
        self_supervised=True,
        cpu_threads=1,
        min_image_size=4,
        square_images=True,
        optimizer_kwargs={"weight_decay": 0.05},
        scheduler=_ssl_schedule,
    )


#: The recipe of every ``--model``, by name.
MODELS: dict[str, ModelSpec] = {
    # circuits run 60 tiny inner iterations per batch: thread start-up costs more
    # than it saves (measured 6x faster on one thread on a busy 2-core machine)
    "supervised-sm": ModelSpec(
        build=_supervised_sm,
        optimizer=torch.optim.SGD,
        lr=0.1,
        epochs=60,
        batch_size=32,
        probe_c=1.0,  # the readout is 10 numbers an image: little to regularise
        self_supervised=False,
        cpu_threads=1,
        min_image_size=3,
    ),
    "sm": ModelSpec(
        build=_sm,
        optimizer=torch.optim.SGD,
        lr=0.1,
        epochs=30,
        batch_size=32,
        probe_c=0.1,
        self_supervised=True,
        cpu_threads=1,
        min_image_size=3,
    ),
    # the SSL models run small convolutions on 8x8 crops: on a busy 2-core machine
    # two threads spent most of their time waiting on each other (100 epochs of
    # PMSN: 443 s on one thread; MSN and SwaV on two were not done after 34 min)
    "msn": _ssl_spec(_msn),
    "pmsn": _ssl_spec(_pmsn),
    "swav": _ssl_spec(_swav),
}


class _LocalCentering(nn.Module):
    """Subtract from every pixel the mean of the ``size x size`` window around it,
    then multiply by ``scale``: a fixed, data-independent stand-in for patch
    whitening.

    Why (measured on MNIST, see docs/mnist.md): non-negative similarity matching
    of raw, non-negative patches learns non-negative blobs that fire for any
    bright patch, and its features read no better than random filters. Centred
    patches have positive and negative parts, and the circuit learns oriented,
    centre-surround stroke detectors. ``scale`` sets the size of the input the
    circuit sees, which sets the eigenvalues of the learnt ``M`` (about 0.01 to
    0.85 with the default): below 2, so the inner iteration (step 1) converges.
    """

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.size, self.scale = size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.size // 2
        local_mean = nn.functional.avg_pool2d(
            x, self.size, stride=1, padding=pad, count_include_pad=False
        )[..., : x.shape[-2], : x.shape[-1]]
        return (x - local_mean) * self.scale


class _AverageAndMaxPool(nn.Module):
    """Readout of a convolutional circuit: the averages and the maxima of its
    output over ``size x size`` blocks (the last, partial block included), side by
    side, ``[B, 2C, ceil(H/size), ceil(W/size)]``. No weights."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        average = nn.functional.avg_pool2d(y, self.size, self.size, ceil_mode=True)
        maximum = nn.functional.max_pool2d(y, self.size, self.size, ceil_mode=True)
        return torch.cat([average, maximum], dim=1)


#: Kernel (and centring window) of the convolutional circuit for large images.
_CONV_KERNEL = 6


def _centred_conv_circuit(
    in_channels: int, out_channels: int, kernel: int, scale: float
) -> nn.Module:
    """A non-negative convolutional circuit on locally centred input, solved to a
    relative fixed-point residual of 1e-3 with the accelerated solver."""
    from pynsm.arch import SimilarityMatching

    encoder = nn.Sequential(
        _LocalCentering(kernel, scale=scale),
        nn.Conv2d(in_channels, out_channels, kernel, bias=False),
    )
    # accelerated solve to a relative residual of 1e-3 (measured on the trained
    # stroke detectors, 500 test images: 17 steps and 0.61 s where 40 plain steps
    # took 0.89 s and stopped at 2.8e-3); at random init (M = I) it stops at its
    # first check, so the readouts of the untrained circuit cost little
    return SimilarityMatching(
        encoder,
        out_channels=out_channels,
        iteration_projection=torch.relu,
        max_iterations=40,
        tol=1e-3,
        solver="accelerated",
    )


def _stroke_detectors(channels: int, pool: nn.Module) -> nn.Module:
    """pynsm 1.0.1's demo circuit (50 channels, 6x6 kernel, ReLU) on centred
    input, read out by ``pool``: it learns stroke detectors (docs/mnist.md shows
    them)."""
    from pynsm.train import CircuitTask

    circuit = _centred_conv_circuit(channels, 50, _CONV_KERNEL, scale=1.8)
    return CircuitTask(circuit, feature_pool=pool)


def _conv_nsm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.train import CircuitStack, CircuitTask

    # deep similarity matching, two circuits each learning by its own rule
    # (measured on MNIST, docs/mnist.md): the stroke detectors, max-pooled 2x2
    # ([50, 12, 12] for 28x28), then 100 detectors of their 4x4 combinations on
    # the locally centred maps (scale 0.16 gives their 800-number input patches
    # about the norm of the first layer's), read out by 3x3 max-pools every 2
    # positions ([100, 4, 4] = 1,600 numbers). The second layer's trained units
    # are sparse and selective, so a max-pool reads "this part is present here";
    # at random init they are dense and the same max-pool reads noise
    strokes = _stroke_detectors(channels, nn.MaxPool2d(2, ceil_mode=True))
    parts = _centred_conv_circuit(50, 100, 4, scale=0.16)
    return CircuitStack(strokes, CircuitTask(parts, feature_pool=nn.MaxPool2d(3, 2)))


def _stacked_supervised_sm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.arch import RunningWhitening, SupervisedSimilarityMatching
    from pynsm.train import CircuitStack, CircuitTask

    # two circuits, each learning by its own local rule: the stroke detectors
    # (unsupervised), then a linear supervised circuit on the averages and maxima
    # of their output over 4x4 blocks (3,600 numbers), whitened, read out by its
    # label reconstruction as on the digits. Whitening makes the reconstruction a
    # regression of the label on the features instead of a principal-component
    # regression (docs/mnist.md: 93.1% -> 98.6%); a batch of 100 cannot whiten
    # 3,600 numbers, so the whitening is estimated over all batches seen
    # (RunningWhitening). The layers learn one after the other
    # (LAYERWISE_EPOCHS): the whitening and the circuit's Hebbian averages then
    # describe the trained detectors only (measured: 97.2% when both layers
    # learn at once). Averages and maxima side by side: ridge on the whitened
    # features 98.77%, against 98.60% for the 3x3 averages (3,200 numbers)
    width = 2 * 50 * (-(-(side - _CONV_KERNEL + 1) // 4)) ** 2
    pool = nn.Sequential(
        _AverageAndMaxPool(4),
        nn.Flatten(),
        RunningWhitening(width, momentum=None, eps=1e-4, update_every=50),
    )
    features = _stroke_detectors(channels, pool)
    encoder = nn.Sequential(
        _Scale(2.5 / width**0.5),
        nn.Linear(width, 100, bias=False),
    )
    head = SupervisedSimilarityMatching(
        encoder,
        num_classes=classes,
        out_channels=100,
        tau=0.5,
        max_iterations=60,
        tol=1e-6,
        solver="accelerated",
        regularization=("weight", "weight"),
    )
    readout = CircuitTask(head, num_classes=classes, feature_pool=_LabelReadout(head))
    return CircuitStack(features, readout, layerwise=(LAYERWISE_EPOCHS,))


#: supervised-sm on large images: epochs in which the stroke detectors learn
#: alone before the supervised circuit (the rest of the run) starts.
LAYERWISE_EPOCHS = 1


def _harmonic_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # supervised-sm: in each layer's phase (CircuitStack layerwise), the full rate
    # for 100 steps, then lr ~ 1/t with t counted from the phase's start. A
    # Hebbian weight W <- W + rate (y x^T - W) is then the plain average of y x^T
    # over every step of its phase (rate = lr * 4 / 100 = 1/t), not an average
    # over the last few thousand images: the label pathway is a regression on
    # 3,600 whitened numbers, which needs far more images than that (measured on
    # MNIST, both layers learning at once: 97.2% with 1/t, 96.9% with a cosine
    # decay, 95.7% with a constant rate)
    start = LAYERWISE_EPOCHS * steps_per_epoch

    def factor(step: int) -> float:
        since = step - start if step >= start else step
        return min(1.0, 100.0 / max(since, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _large_circuit_spec(
    build: BuildFn,
    *,
    supervised: bool,
    square: bool = False,
    min_size: int,
    epochs: int,
    scheduler: SchedulerFn | None = None,
) -> ModelSpec:
    """The recipe both circuits share on large images (measured on MNIST, see
    docs/mnist.md): SGD at a high learning rate, because the loss is divided by
    numel(y) (W moves lr * 4 / 50 of the way to its target a step). On MNIST,
    one CPU thread: supervised-sm's 4 epochs (1 for the stroke detectors, 3 for
    the supervised circuit) take about 7 minutes, sm's 3 about 6, longer than the
    evaluation."""
    return ModelSpec(
        build=build,
        optimizer=torch.optim.SGD,
        lr=0.5,
        epochs=epochs,
        batch_size=100,
        probe_c=1.0,
        self_supervised=not supervised,
        cpu_threads=1,
        min_image_size=min_size,
        square_images=square,
        scheduler=scheduler,
    )


#: Images the SSL models see by default on large images (see docs/mnist.md).
SSL_LARGE_IMAGES = 300_000

#: The recipes for images larger than 16x16 (MNIST-sized data, 28x28 and up),
#: by model; a model missing here uses its :data:`MODELS` recipe there too.
LARGE_MODELS: dict[str, ModelSpec] = {
    # the top circuit's input width is computed from the image side: square only
    "supervised-sm": _large_circuit_spec(
        _stacked_supervised_sm,
        supervised=True,
        square=True,
        min_size=_CONV_KERNEL,
        # the stroke detectors' epoch, then 3 of the supervised circuit (measured
        # on MNIST, seeds 0 / 1: 98.59 / 98.65% after 2, 98.64 / 98.73% after 3)
        epochs=LAYERWISE_EPOCHS + 3,
        scheduler=_harmonic_schedule,
    ),
    # two stacked circuits: a 6x6 kernel, a 2x2 pool, a 4x4 kernel and a 3x3 pool
    # need 16 pixels a side
    "sm": _large_circuit_spec(_conv_nsm, supervised=False, min_size=16, epochs=3),
    # the SSL models train on views of half the image side (14x14 for MNIST)
    # for SSL_LARGE_IMAGES images seen: 5 epochs of MNIST's 60,000 fit the
    # 20-minute CPU budget; a smaller set gets more epochs, the same steps
    "msn": _ssl_spec(_msn_large, epochs=1, train_images=SSL_LARGE_IMAGES),
    "pmsn": _ssl_spec(_pmsn_large, epochs=1, train_images=SSL_LARGE_IMAGES),
    "swav": _ssl_spec(_swav_large, epochs=1, train_images=SSL_LARGE_IMAGES),
}

#: Images up to this height and width get the :data:`MODELS` ("small") recipes.
SMALL_IMAGE_SIDE = 16


def select_recipe(model: str, height: int, width: int) -> tuple[str, ModelSpec]:
    """The recipe of ``model`` for images of ``height x width``: ``(name, spec)``.

    Recipes are chosen by what the data is, not by its name, so any 28x28 gray
    ``.npz`` gets the recipe measured on MNIST. ``name`` is ``"small"`` (images up
    to 16x16, tuned on the 8x8 digits) or ``"large"`` (tuned on 28x28 MNIST); it
    is recorded in reports and checkpoints.

    Example:
        >>> from pynsm.cli.recipes import select_recipe
        >>> select_recipe("sm", 8, 8)[0], select_recipe("sm", 28, 28)[0]
        ('small', 'large')
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    if max(height, width) <= SMALL_IMAGE_SIDE:
        return "small", MODELS[model]
    return "large", LARGE_MODELS.get(model, MODELS[model])
