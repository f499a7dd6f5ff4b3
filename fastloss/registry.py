"""The paper's loss configurations by the names of its Tables 2-4 (Ma et al. 2021).

``PAPER_LOSSES`` maps each name to ``(class, kwargs)``; :func:`get_loss` builds one, with overrides.
The configuration is the paper's experimental setting (Sec. 3.2 and 4; nnU-Net V1 and the authors' SegLoss
code): softmax; region losses as *batch* losses without the background class, smoothing 1e-5; TopK 10 %;
focal γ = 2; Tversky α = 0.3 (false positives) / β = 0.7 (false negatives); Asym β = 1.5; pGDice k = 2.5;
focal Tversky exponent 1/γ = 0.75 (γ = 4/3) on the class-averaged Tversky loss (Eq. 16); GDice and pGDice
over all classes, background included (Eqs. 15, 18), with their smoothing relative to the weighted sums so
that it cannot dominate them; SS w = 0.1 (SegLoss); ELL w_dice = 0.8, w_ce = 0.2, γ = 0.3; DiceBD with α
from 1 down by 0.01 per epoch to 0.01; DiceHD with Karimi's adaptive α. Every entry builds and runs with no
other argument: WCE and ELL take their class weights from each batch's label frequencies unless given
``weight=`` (the paper's are the training set's: :func:`fastloss.class_weights`), BD/HD/pCE compute their
distance maps themselves. The README's "Fidelity to the paper" table lists every entry's equation,
parameters and each departure from the paper.

Notes on normalisation: ``Focal`` and the focal part of ``DiceFocal`` are Eq. (5) exactly: the softmax
focal loss over all classes (background included, also in DiceFocal, whose Dice part excludes it),
summed over classes and averaged over voxels (``mean_over="voxels"``; MONAI's ``mean`` would also
divide by C, and its ``include_background=False`` would drop channel 0 before the softmax). ``Lovász``
is the plain Lovász softmax loss: the paper trained it after a CE warm-up, which is the training loop's
business. ``BD`` and ``HD`` (Eqs. 20, 21) are listed too: the paper uses them only inside DiceBD/DiceHD.
"""

from __future__ import annotations

import inspect
import re
import textwrap
import unicodedata
import warnings
from typing import Dict, Optional, Tuple

from torch import nn

from . import losses as L

__all__ = ["PAPER_LOSSES", "BEYOND_PAPER", "get_loss", "logits_loss", "paper_loss_names", "beyond_paper_names",
           "canonical_name", "name_key"]

# Region losses as in the paper (nnU-Net's SoftDiceLoss kwargs: batch_dice, do_bg=False, smooth=1e-5).
_REGION = dict(softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

PAPER_LOSSES: Dict[str, Tuple[type, dict]] = {
    # ---- Table 2: the 20 losses
    "Asym": (L.AsymmetricSimilarityLoss, dict(_REGION, beta=1.5)),
    "CE": (L.CrossEntropyLoss, {}),
    "Dice": (L.DiceLoss, dict(_REGION)),
    "DiceBD": (L.DiceBoundaryLoss, dict(_REGION, alpha=1.0, alpha_step=0.01, alpha_min=0.01)),
    "DiceCE": (L.DiceCELoss, dict(_REGION)),
    "DiceFocal": (L.DiceFocalLoss, dict(_REGION, gamma=2.0, use_softmax=True, focal_include_background=True,
                                      focal_mean_over="voxels")),
    "DiceHD": (L.DiceHausdorffDTLoss, dict(_REGION, alpha=None, distance_alpha=2.0)),
    "DiceTopK": (L.DiceTopKLoss, dict(_REGION, k=10.0)),
    "ELL": (L.ExpLogLoss, dict(_REGION, w_dice=0.8, w_ce=0.2, gamma_dice=0.3, gamma_ce=0.3)),
    "Focal": (L.FocalLoss, dict(use_softmax=True, gamma=2.0, mean_over="voxels")),
    # Eq. (16): (L_Tversky)^(1/γ) of the class-averaged batch Tversky loss, 1/γ = 0.75 (SegLoss's exponent)
    "FocalTversky": (L.FocalTverskyLoss, dict(_REGION, alpha=0.3, beta=0.7, gamma=4.0 / 3.0, per_class_power=False)),
    # Eq. (15) sums over all C classes: background included; smoothing relative to the weighted sums
    "GDice": (L.GeneralizedDiceLoss, dict(_REGION, include_background=True, smooth_relative=True)),
    "IoU": (L.IoULoss, dict(_REGION)),
    "Lovász": (L.LovaszSoftmaxLoss, {}),
    "pCE": (L.DistancePenalizedCELoss, {}),
    "pGDice": (L.PenaltyGeneralizedDiceLoss, dict(_REGION, include_background=True, smooth_relative=True, k=2.5)),
    "SS": (L.SensitivitySpecificityLoss, dict(softmax=True, include_background=False, batch=True, w=0.1,
                                            smooth_nr=0.0, smooth_dr=1e-5)),
    "TopK": (L.TopKLoss, dict(k=10.0)),
    "Tversky": (L.TverskyLoss, dict(_REGION, alpha=0.3, beta=0.7)),
    "WCE": (L.WeightedCrossEntropyLoss, {}),
}
# ---- Table 3: TopK variants (percentage k and probability threshold t)
for _k in (10, 30, 50, 70, 90):
    PAPER_LOSSES[f"TopK-{_k}%"] = (L.TopKLoss, dict(k=float(_k)))
for _t in ("0.1", "0.3", "0.5", "0.7", "0.9"):
    PAPER_LOSSES[f"TopK-Threshold ({_t})"] = (L.TopKLoss, dict(t=float(_t)))
# ---- Table 4: Dice variants (batch/sample Dice, with/without squared denominator)
PAPER_LOSSES["Dice (Batch, no square)"] = (L.DiceLoss, dict(_REGION))
PAPER_LOSSES["BatchSquareDice"] = (L.DiceLoss, dict(_REGION, squared_pred=True))
PAPER_LOSSES["SampleDice (no square)"] = (L.DiceLoss, dict(_REGION, batch=False))
PAPER_LOSSES["SampleSquareDice"] = (L.DiceLoss, dict(_REGION, batch=False, squared_pred=True))
# ---- Eqs. (20), (21): the boundary terms on their own (the paper trains them only inside DiceBD/DiceHD)
PAPER_LOSSES["BD"] = (L.BoundaryLoss, dict(softmax=True, include_background=False, allow_1d=True))
PAPER_LOSSES["HD"] = (L.HausdorffDTLoss, dict(softmax=True, include_background=False))

# Other spellings accepted by get_loss (looked up after normalisation, see name_key).
_ALIASES = {
    "Lovasz": "Lovász",
    "DPCE": "pCE",
    "BatchDice": "Dice (Batch, no square)",
    "SampleDice": "SampleDice (no square)",
    "DiceBatchNoSquare": "Dice (Batch, no square)",
}
# Table 3's percentages without the percent sign: "TopK10", "TopK-10", "topk 30".
for _k in (10, 30, 50, 70, 90):
    _ALIASES[f"TopK{_k}"] = f"TopK-{_k}%"


def name_key(name: str) -> str:
    """The key a loss name is looked up by: case, accents, spaces and punctuation ignored ('Lovász' ==
    'lovasz', 'TopK 10%' == 'TopK-10%', 'TopK-Threshold(0.1)' == 'topk threshold 0.1')."""
    s = unicodedata.normalize("NFKD", name)
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).casefold()
    return re.sub(r"[^0-9a-z.%]", "", s)


# Class names accepted too, with or without their "Loss": each stands for the first entry built from that
# class (its Table 2 loss), e.g. "DiceCELoss" -> "DiceCE", "GeneralizedDice" -> "GDice", "HausdorffDT" -> "HD".
_CLASS_NAMES: Dict[str, str] = {}
for _name, (_cls, _) in PAPER_LOSSES.items():
    _CLASS_NAMES.setdefault(_cls.__name__, _name)
_ALIASES.update(_CLASS_NAMES)
for _cname, _name in _CLASS_NAMES.items():
    if _cname.endswith("Loss") and _cname[:-4] not in PAPER_LOSSES:
        _ALIASES.setdefault(_cname[:-4], _name)

# Losses after the paper (issue 22), built by get_loss too but not in PAPER_LOSSES (the paper's tables): the
# class defaults (the authors' settings; DiceCESkeletonRecall is the Skeleton Recall authors' nnU-Net trainer loss).
BEYOND_PAPER: Dict[str, Tuple[type, dict]] = {
    "SkeletonRecall": (L.SkeletonRecallLoss, {}),
    "DiceCESkeletonRecall": (L.DiceCESkeletonRecallLoss, {}),
    "BoundaryDoU": (L.BoundaryDoULoss, {}),
    "cbDice": (L.CbDiceLoss, {}),
    # MONAI's other segmentation losses (issue 21): MONAI's defaults, with a softmax where MONAI's default (no
    # activation) would read logits as probabilities; UnifiedFocal takes probabilities, as MONAI's
    "clDice": (L.SoftclDiceLoss, dict(softmax=True)),
    "DiceclDice": (L.SoftDiceclDiceLoss, dict(softmax=True)),
    "UnifiedFocal": (L.AsymmetricUnifiedFocalLoss, {}),
    "GWDice": (L.GeneralizedWassersteinDiceLoss, {}),
    "MCC": (L.MCCLoss, dict(softmax=True)),
    "NACL": (L.NACLLoss, {}),
}
# (looked up by get_loss after the paper's names, by name or class name with or without its "Loss";
# canonical_name knows the paper's only unless asked for these too)
_BEYOND_LOOKUP: Dict[str, str] = {}
for _name, (_cls, _) in BEYOND_PAPER.items():
    _BEYOND_LOOKUP[name_key(_name)] = _BEYOND_LOOKUP[name_key(_cls.__name__)] = _name
    if _cls.__name__.endswith("Loss"):
        _BEYOND_LOOKUP.setdefault(name_key(_cls.__name__[:-4]), _name)

_LOOKUP: Dict[str, str] = {}
for _name in list(PAPER_LOSSES) + list(_ALIASES):
    _canon = _ALIASES.get(_name, _name)
    _k2 = name_key(_name)
    if _k2 in _LOOKUP and _LOOKUP[_k2] != _canon:  # pragma: no cover - guards the table itself
        raise RuntimeError(f"loss names {_name!r} and {_LOOKUP[_k2]!r} collide after normalisation")
    _LOOKUP[_k2] = _canon


def canonical_name(name: str, *, beyond_paper: bool = False) -> Optional[str]:
    """The :data:`PAPER_LOSSES` key that ``name`` stands for under :func:`get_loss`'s spelling rules
    (``"lovasz"`` -> ``"Lovász"``, ``"TopK10"`` -> ``"TopK-10%"``, ``"GeneralizedDiceLoss"`` -> ``"GDice"``),
    or None for a name that is not known. With ``beyond_paper=True`` the :data:`BEYOND_PAPER` keys are known too
    (looked up after the paper's, by name or class name: ``"skeletonrecall"``, ``"SoftclDiceLoss"`` -> ``"clDice"``).

    Raises:
        TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a string, got {type(name).__name__}")
    canon = _LOOKUP.get(name_key(name))
    if canon is None and beyond_paper:
        canon = _BEYOND_LOOKUP.get(name_key(name))
    return canon


def beyond_paper_names() -> list:
    """The canonical names of :data:`BEYOND_PAPER` (the losses after the paper that :func:`get_loss` builds)."""
    return list(BEYOND_PAPER)


class _SoftmaxFirst(nn.Module):
    """``loss(softmax(logits), target)``: a loss of probabilities fed a network's logits."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, input, target):
        return self.loss(input.softmax(dim=1), target)


def logits_loss(name: str, num_classes: Optional[int] = None, **overrides) -> nn.Module:
    """:func:`get_loss` for a network's logits of ``num_classes`` channels (what the nnU-Net trainers and the
    odyssey train with): every loss of :data:`PAPER_LOSSES` and :data:`BEYOND_PAPER` reads logits as it is but
    ``UnifiedFocal`` (MONAI's ``AsymmetricUnifiedFocalLoss`` reads probabilities), which gets the softmax first
    and, for ``num_classes > 2``, Yeung et al.'s multi-class form with every foreground class rare
    (``rare_classes = 1..C-1``; with 2 classes that is MONAI's binary loss).

    Raises:
        TypeError / ValueError: as :func:`get_loss`; ``num_classes`` not an int >= 2 where UnifiedFocal needs it.
    """
    canon = canonical_name(name, beyond_paper=True) if isinstance(name, str) else None
    if canon != "UnifiedFocal":
        return get_loss(name, **overrides)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"UnifiedFocal needs the number of classes (an int >= 2) of the logits, got {num_classes!r}")
    extra = dict(num_classes=num_classes)
    if num_classes > 2:
        extra["rare_classes"] = list(range(1, num_classes))
    return _SoftmaxFirst(get_loss(name, **{**extra, **overrides}))


def paper_loss_names() -> list:
    """The canonical names of :data:`PAPER_LOSSES` (Tables 2, 3, 4 in order)."""
    return list(PAPER_LOSSES)


def get_loss(name: str, **overrides) -> nn.Module:
    """Build the paper's configuration of loss ``name`` (a name of Tables 2-4), with ``overrides``.

    The lookup ignores case, accents, spaces and punctuation (``"Lovasz"``, ``"lovász"``,
    ``"topk-10%"``, ``"TopK10"``, ``"TopK-Threshold (0.5)"``, ``"BatchDice"``, ``"SampleDice"`` all work;
    :func:`canonical_name` says which entry a spelling stands for). A loss class name, with or without its
    ``Loss`` (``"GeneralizedDice"``, ``"HausdorffDT"``), works too and gives the paper's configuration of the Table 2 loss that class implements
    (``"DiceCELoss"`` is ``"DiceCE"``, ``"GeneralizedDiceLoss"`` is ``"GDice"``); for the class's own
    (MONAI) defaults, construct the class itself (``fastloss.DiceCELoss()``). All names are listed below.

    ``DiceBD`` and ``DiceHD`` are not plain sums of fixed terms: they follow the paper's schedules over
    training (Sec. 3.2). DiceBD weighs ``α·Dice + (1 − α)·BD`` with α going from 1 down by 0.01 per epoch
    to 0.01 (``get_loss("DiceBD", steps_per_epoch=250)`` lets it count its own epochs, or call
    ``loss.step_epoch()`` after each; built without ``steps_per_epoch`` it warns once, here, that it is
    plain Dice until the schedule moves); DiceHD weighs Dice by Karimi and Salcudean's adaptive α. How the
    loss learns the epoch, and what it does when it is not told, is in the docstrings of :class:`~fastloss.DiceBoundaryLoss` and
    :class:`~fastloss.DiceHausdorffDTLoss` (``help(fastloss.DiceBoundaryLoss)``). The paper also trained
    BD, HD and Lovász only after a warm-up with another loss: that is the training loop's business.

    ``WCE`` and ``ELL`` weigh classes by the frequencies of each batch unless given ``weight=``; the
    paper's weights are the training set's: ``get_loss("WCE", weight=fastloss.class_weights(labels, C))``.

    Args:
        name: the loss name.
        **overrides: constructor arguments replacing (or adding to) the paper's configuration.

    Returns:
        A new ``nn.Module``.

    Raises:
        TypeError: ``name`` is not a string, or an override the class does not take (the message lists
            the arguments it takes; ``reduction`` for a loss that always returns one scalar, such as
            ``DiceTopK``, says so).
        ValueError: an unknown name (the message lists the known names), or an invalid override value.

    Example:
        >>> from fastloss.registry import get_loss
        >>> loss = get_loss("DiceTopK")
        >>> loss = get_loss("TopK-30%")
        >>> loss = get_loss("DiceCE", lambda_ce=0.5)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    canon = canonical_name(name)
    if canon is None:
        canon = _BEYOND_LOOKUP.get(name_key(name))
    if canon is None:
        raise ValueError(f"unknown loss name {name!r}; known names: {', '.join(PAPER_LOSSES)}; after the paper: "
                         f"{', '.join(BEYOND_PAPER)} (or a loss class name such as 'DiceCELoss')")
    cls, kwargs = PAPER_LOSSES[canon] if canon in PAPER_LOSSES else BEYOND_PAPER[canon]
    _check_overrides(name, canon, cls, overrides)
    if canon == "DiceBD":
        _warn_dicebd_schedule({**kwargs, **overrides})
    return cls(**{**kwargs, **overrides})


def _check_overrides(name: str, canon: str, cls: type, overrides: dict) -> None:
    """One TypeError naming the arguments the class accepts, for overrides it does not take."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    bad = [k for k in overrides if k not in params]
    if not bad:
        return
    what = f"argument {bad[0]!r}" if len(bad) == 1 else f"arguments {bad}"
    why = ""
    if "reduction" in bad:
        without = [n for n, (c, _) in PAPER_LOSSES.items() if "reduction" not in inspect.signature(c).parameters]
        why = (f" ({cls.__name__} always returns one scalar, so reduction='none' or 'sum' cannot apply; the "
               f"losses without reduction are {', '.join(without)}, every other name takes it)")
    shown = repr(name) if name == canon else f"{name!r}) ({canon}"
    raise TypeError(f"get_loss({shown}) builds {cls.__name__}, which takes no {what}{why}; it accepts: "
                    f"{', '.join(accepted)}")


def _warn_dicebd_schedule(config: dict) -> None:
    """DiceBD built without ``steps_per_epoch`` starts as plain Dice (α = 1) and stays so until its epoch
    schedule moves: say so once, here, rather than after ``warn_after_steps`` training calls."""
    if config.get("steps_per_epoch") is not None or config.get("warn_after_steps", 1000) in (None, 0):
        return
    alpha = config.get("alpha", 1.0)
    if alpha is None or float(alpha) < 1.0 or not float(config.get("alpha_step", 0.01)) > 0:
        return  # not plain Dice at the start, or a fixed alpha: nothing waits for a schedule
    warnings.warn(
        "get_loss('DiceBD') is plain Dice (alpha = 1, the boundary term weighted 0) until its epoch schedule "
        "moves (alpha falls by alpha_step per epoch to alpha_min, the paper's 0.01). Move it with "
        "get_loss('DiceBD', steps_per_epoch=<batches per epoch>) so that the loss counts its own epochs, or call "
        "loss.step_epoch() after every epoch (or loss.set_epoch(epoch)); pass warn_after_steps=None if you "
        "move it yourself and want no warning.",
        UserWarning,
        stacklevel=3,
    )


def _names_section() -> str:
    """The "Names" part of ``get_loss``'s docstring, built from the tables so that it cannot go stale."""
    lines = ["", "    Names (``fastloss.PAPER_LOSSES``; class names map to the first entry of their class):", ""]
    for name, (cls, _) in PAPER_LOSSES.items():
        lines.append(f"        - ``{name}``: :class:`{cls.__name__}`")
    other = [a for a in _ALIASES if a not in _CLASS_NAMES]
    for title, pairs in (("Other spellings", [(a, _ALIASES[a]) for a in other]),
                         ("Class names", list(_CLASS_NAMES.items()))):
        text = f"{title}: " + ", ".join(f"``{a}`` -> ``{n}``" for a, n in pairs) + "."
        lines += [""] + textwrap.wrap(text, width=100, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines + [""])


get_loss.__doc__ = get_loss.__doc__.rstrip() + "\n" + _names_section()
