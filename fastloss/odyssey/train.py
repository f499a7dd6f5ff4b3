"""Training, timing and evaluation for the odyssey runner.

One network (MONAI's ``DynUNet``, nnU-Net's architecture: two 3x3x3 conv + instance norm + leaky ReLU
blocks per level, strided-conv downsampling, transposed-conv upsampling; deep supervision off) is
initialised once per task, and every loss trains a copy of that initialisation on the same batches.
Optimiser and schedule are nnU-Net V1's (the paper's), scaled down: Adam (β = 0.9, 0.999, weight decay
3e-5, AMSGrad), the learning rate multiplied by 0.2 whenever the moving average of the epoch loss
(``ma = 0.93·ma + 0.07·loss``) has not improved for ``patience`` epochs, down to 1e-6.

The paper's training tricks (Sec. 3.2), scaled to the run's length:

- Lovász: cross-entropy for the first ``warmup`` share of the steps, then Lovász (Berman et al.).
- DiceHD: Dice for the first ``warmup`` share, then DiceHD (the paper fine-tunes a Dice model).
- DiceBD: ``α`` falls by ``alpha_step`` per epoch (``loss.step_epoch()``), from 1 (plain Dice) to
  0.01; the paper's 0.01 per epoch reaches the floor after 99 of 1000 epochs, so the step here is
  ``0.99 / max(1, round(0.099·epochs))`` to reach it at the same share of training.
- WCE and ELL: class weights from the training set's voxel counts (Eq. 2's ``1/f_c``; Wong et al.'s
  ``(1/f_c)^0.5``), ``fastloss.class_weights``.

Each training step is timed in three parts with no extra work: the network's forward pass, the loss
(forward and backward on the detached logits: ``loss_ms``) and the network's backward pass from
the logits' gradient, plus the optimiser step; ``step_ms`` is their sum.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import metrics
from .. import registry
from ..registry import BEYOND_PAPER, PAPER_LOSSES, get_loss, logits_loss
from .data import BatchSampler, Case, Dataset

__all__ = ["build_network", "build_loss", "canonical_name", "monai_loss", "MONAI_EQUIVALENTS", "TrainConfig",
           "train_one", "time_steps", "predict", "evaluate", "training_class_counts"]


def build_network(in_channels: int, num_classes: int, patch: Sequence[int], filters: Sequence[int]) -> nn.Module:
    """nnU-Net-like 3D U-Net (MONAI ``DynUNet``): one level per entry of ``filters``; the first level
    keeps the resolution, each further level halves every axis (so the patch must be divisible by
    ``2 ** (len(filters) - 1)``).

    Raises:
        ImportError: MONAI is not installed.
        ValueError: fewer than 3 levels, or a patch axis not divisible by the total downsampling.
    """
    try:
        from monai.networks.nets import DynUNet
    except ImportError:
        raise ImportError("the odyssey runner needs MONAI for its network: pip install monai (or 'fastloss[odyssey]')") from None
    levels = len(filters)
    if levels < 3:
        raise ValueError(f"filters must give at least 3 U-Net levels (DynUNet's minimum), got {tuple(filters)}")
    factor = 2 ** (levels - 1)
    if any(p % factor for p in patch):
        raise ValueError(f"patch {tuple(patch)} must be divisible by {factor} on every axis ({levels} levels)")
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=False,
        res_block=False,
    )


# ------------------------------------------------------------------------------------------ losses
def build_loss(name: str, epochs: int, class_counts: Optional[torch.Tensor] = None,
               num_classes: Optional[int] = None) -> nn.Module:
    """The paper's configuration of ``name`` (``fastloss.get_loss``), with the DiceBD schedule scaled
    to ``epochs`` (see the module docstring) and, given the training set's voxel counts per class
    (``fastloss.class_counts``), WCE's and ELL's class weights from them, as the paper's Eq. (2) and
    Wong et al. take them (without counts, those losses weigh each batch by its own frequencies).

    A loss after the paper (:data:`fastloss.registry.BEYOND_PAPER`) is built as
    :func:`fastloss.registry.logits_loss` builds it for the network's ``num_classes`` logits (default: the length
    of ``class_counts``): its authors' or MONAI's settings; UnifiedFocal on the softmax, multi-class beyond two."""
    canon = canonical_name(name)
    if canon in BEYOND_PAPER:
        if num_classes is None and class_counts is not None:
            num_classes = int(class_counts.numel())
        return logits_loss(canon, num_classes)
    kwargs = PAPER_LOSSES[canon][1] if canon in PAPER_LOSSES else {}
    extra = {}
    if "alpha_step" in kwargs:
        extra["alpha_step"] = 0.99 / max(1, round(0.099 * epochs))
        extra["warn_after_steps"] = None  # train_one moves the schedule (step_epoch after every epoch)
    if class_counts is not None and canon in ("WCE", "ELL"):
        from ..class_weights import class_weights

        extra["weight"] = class_weights(class_counts, scheme=canon.lower()).float()
    return get_loss(canon, **extra)


def canonical_name(name: str) -> str:
    """The PAPER_LOSSES or BEYOND_PAPER key of ``name`` (get_loss's spelling rules: ``"lovasz"`` is ``"Lovász"``,
    ``"skeletonrecall"`` is ``"SkeletonRecall"``).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name; the message lists the known ones.
    """
    canon = registry.canonical_name(name, beyond_paper=True)
    if canon is None:
        raise ValueError(f"unknown loss name {name!r}; known names: {', '.join(PAPER_LOSSES)}; after the paper: "
                         f"{', '.join(BEYOND_PAPER)} (or a loss class name such as 'DiceCELoss')")
    return canon


#: The losses trained after a warm-up with another loss (the paper's Sec. 3.2).
WARMUP = {"Lovász": "CE", "DiceHD": "Dice"}


def _monai_factories() -> Dict[str, Callable[[], nn.Module]]:
    from monai import losses as M

    region = dict(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    return {
        "Dice": lambda: M.DiceLoss(**region),
        "IoU": lambda: M.DiceLoss(**region, jaccard=True),
        "DiceCE": lambda: M.DiceCELoss(**region),
        "DiceFocal": lambda: M.DiceFocalLoss(**region, gamma=2.0),
        "Focal": lambda: M.FocalLoss(include_background=True, to_onehot_y=True, use_softmax=True, gamma=2.0),
        "Tversky": lambda: M.TverskyLoss(**region, alpha=0.3, beta=0.7),
        "GDice": lambda: M.GeneralizedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True),
        "HD": lambda: M.HausdorffDTLoss(include_background=False, to_onehot_y=True, softmax=True),
    }


#: Paper losses with a MONAI class of the same configuration (timed side by side).
MONAI_EQUIVALENTS = ("Dice", "IoU", "DiceCE", "DiceFocal", "Focal", "Tversky", "GDice", "HD")


def monai_loss(name: str) -> Optional[nn.Module]:
    """MONAI's class for the paper loss ``name`` in the paper's configuration, or None if MONAI has none."""
    canon = canonical_name(name)
    if canon not in MONAI_EQUIVALENTS:
        return None
    return _monai_factories()[canon]()


# ------------------------------------------------------------------------------------------ training
@dataclass
class TrainConfig:
    """How one loss is trained (identical for every loss of a run)."""

    epochs: int = 8
    steps_per_epoch: int = 25
    batch_size: int = 2
    patch: Sequence[int] = (24, 24, 24)
    lr: float = 3e-3
    weight_decay: float = 3e-5
    patience: int = 2
    warmup: float = 0.5
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "steps_per_epoch", "batch_size", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "patience" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr must lie in (0, 1), got {self.lr!r}")
        if not (0 <= self.warmup < 1):
            raise ValueError(f"warmup must lie in [0, 1), got {self.warmup!r}")
        return self


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TrainResult:
    model: nn.Module
    step_ms: List[float] = field(default_factory=list)
    loss_ms: List[float] = field(default_factory=list)
    epoch_loss: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    seconds: float = 0.0


def _timed_step(model, loss_fn, opt, x, y, device) -> tuple:
    """One optimisation step timed in parts: ``(loss value, step ms, loss ms)``."""
    _sync(device)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    _sync(device)
    t1 = time.perf_counter()
    # the loss on detached logits: its forward and backward alone, then the network's backward from
    # the logits' gradient (the same arithmetic as loss(model(x)).backward()).
    z = logits.detach().requires_grad_(True)
    value = loss_fn(z, y)
    value.backward()
    _sync(device)
    t2 = time.perf_counter()
    logits.backward(z.grad)
    opt.step()
    _sync(device)
    t3 = time.perf_counter()
    return value.detach(), (t3 - t0) * 1e3, (t2 - t1) * 1e3


def training_class_counts(dataset: Dataset) -> torch.Tensor:
    """Voxels per class over the training cases (for WCE's and ELL's weights)."""
    from ..class_weights import class_counts

    return class_counts((c.label for c in dataset.train), dataset.num_classes)


def train_one(
    loss_name: str,
    init_state: dict,
    make_model: Callable[[], nn.Module],
    dataset: Dataset,
    cfg: TrainConfig,
    progress: Optional[Callable[[int], None]] = None,
) -> TrainResult:
    """Train a copy of the initial network with loss ``loss_name`` (the paper's configuration and
    training tricks) on the batches of ``BatchSampler(seed=cfg.seed)``.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the step and value are named).
    """
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = make_model().to(device)
    model.load_state_dict(init_state)
    model.train()
    canon = canonical_name(loss_name)
    main_loss = build_loss(canon, cfg.epochs, training_class_counts(dataset), dataset.num_classes).to(device)
    warm = WARMUP.get(canon)
    warm_loss = get_loss(warm).to(device) if warm else None
    warm_steps = int(cfg.warmup * cfg.epochs * cfg.steps_per_epoch) if warm else 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, amsgrad=True)
    sampler = BatchSampler(dataset.train, cfg.patch, cfg.batch_size, seed=cfg.seed)
    res = TrainResult(model)
    ma, best_ma, since_best = None, math.inf, 0
    t_start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        total = torch.zeros((), device=device)
        for _ in range(cfg.steps_per_epoch):
            x, y = sampler.next()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            fn = warm_loss if step < warm_steps else main_loss
            value, step_ms, loss_ms = _timed_step(model, fn, opt, x, y, device)
            total += value
            if fn is main_loss:
                res.step_ms.append(step_ms)
                res.loss_ms.append(loss_ms)
            step += 1
            if progress is not None:
                progress(1)
        epoch_loss = float(total) / cfg.steps_per_epoch  # one host sync per epoch
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"{canon}: the training loss is {epoch_loss} in epoch {epoch} (lr {cfg.lr})")
        res.epoch_loss.append(epoch_loss)
        res.lr.append(opt.param_groups[0]["lr"])
        if hasattr(main_loss, "step_epoch"):
            main_loss.step_epoch()
        # nnU-Net V1: ReduceLROnPlateau(factor 0.2) on the moving average of the training loss.
        ma = epoch_loss if ma is None else 0.93 * ma + 0.07 * epoch_loss
        improved = not math.isfinite(best_ma) or ma < best_ma - 1e-4 * abs(best_ma)
        if improved:
            best_ma, since_best = ma, 0
        else:
            since_best += 1
            if since_best > cfg.patience:
                for g in opt.param_groups:
                    g["lr"] = max(g["lr"] * 0.2, 1e-6)
                since_best = 0
    res.seconds = time.perf_counter() - t_start
    return res


def time_steps(
    losses: Dict[str, nn.Module],
    init_state: dict,
    make_model: Callable[[], nn.Module],
    dataset: Dataset,
    cfg: TrainConfig,
    steps: int,
) -> Dict[str, tuple]:
    """Time ``steps`` training steps per loss, interleaved (step 1 of every loss, then step 2, ...) so
    that a change of machine load hits them alike; each loss trains its own copy of the initial network
    on the same batches. Returns ``{key: (step_ms list, loss_ms list)}`` (the first step, a warm-up, is
    dropped)."""
    device = torch.device(cfg.device)
    models, opts = {}, {}
    for key in losses:
        m = make_model().to(device)
        m.load_state_dict(init_state)
        m.train()
        models[key] = m
        opts[key] = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
        losses[key].to(device)
    sampler = BatchSampler(dataset.train, cfg.patch, cfg.batch_size, seed=cfg.seed + 1)
    out = {key: ([], []) for key in losses}
    for i in range(steps + 1):
        x, y = sampler.next()
        x, y = x.to(device), y.to(device)
        for key, fn in losses.items():
            _, step_ms, loss_ms = _timed_step(models[key], fn, opts[key], x, y, device)
            if i > 0:
                out[key][0].append(step_ms)
                out[key][1].append(loss_ms)
    return out


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, patch: Sequence[int], device: str) -> torch.Tensor:
    """Label map ``(1, *spatial)`` int64 of one image ``(channels, *spatial)``: sliding windows of the
    training patch with half overlap and Gaussian weighting (nnU-Net's inference), then argmax."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = image[None].to(device)
    logits = sliding_window_inference(x, tuple(patch), sw_batch_size=4, predictor=model, overlap=0.5,
                                      mode="gaussian", padding_mode="constant", cval=float(image.min()))
    model.train()
    return logits.argmax(1).cpu()


def evaluate(model: nn.Module, cases: Sequence[Case], num_classes: int, patch, device: str, tolerance: float = 1.0) -> List[dict]:
    """Per-case, per-class DSC and NSD (at ``tolerance`` in the cases' spacing units, the paper's
    1 mm) of the model's predictions, with ``fastloss.metrics`` (MONAI's conventions: a class absent
    from the reference gives NaN, an empty prediction of a present class 0).

    Returns rows ``{"case", "class", "metric", "value"}``, classes numbered from 1."""
    rows = []
    eye = torch.eye(num_classes, dtype=torch.bool)
    for case in cases:
        pred = predict(model, case.image, patch, device)
        p = eye[pred[0]].movedim(-1, 0)[None]  # (1, C, *spatial) one-hot
        g = eye[case.label[0]].movedim(-1, 0)[None]
        dsc = metrics.dice(p, g, include_background=False)[0]
        nsd = metrics.surface_dice(p, g, tolerance=tolerance, include_background=False, spacing=case.spacing)[0]
        for c in range(num_classes - 1):
            rows.append({"case": case.name, "class": c + 1, "metric": "DSC", "value": float(dsc[c])})
            rows.append({"case": case.name, "class": c + 1, "metric": "NSD", "value": float(nsd[c])})
    return rows


def summarize_ms(samples: Sequence[float]) -> dict:
    """Median and 20th/80th percentiles of a list of timings (ms)."""
    if not samples:
        return {"median": math.nan, "p20": math.nan, "p80": math.nan}
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return {"median": statistics.median(s), "p20": q[1], "p80": q[7]}
