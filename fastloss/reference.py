"""Deliberately naive reference implementations of the losses of Ma et al. (2021), Eqs. (1)-(25).

These are the oracles the tests check the library against. They are written straight from the paper's
equations (and, where an equation leaves a choice, from the original papers; for the classes that carry
MONAI's name, from MONAI's conventions), independently of ``fastloss.losses`` and ``fastloss.ops``:
explicit Python loops over batch items and classes, sums over the selected voxels, float64, no fused
statistics. They are slow on purpose and meant for tiny tensors only.

Common arguments:

- ``input``: logits or probabilities ``(B, C, *spatial)``; ``activation`` says how to turn them into the
  probabilities ``s`` of the paper: ``"softmax"`` over the class axis, ``"sigmoid"`` per channel,
  ``"none"`` (already probabilities).
- ``target``: a dense one-hot (or soft) target ``(B, C, *spatial)``, the ``g`` of the paper. Use
  :func:`one_hot` to build it from integer labels.
- ``mask``: ``(B, *spatial)`` 0/1 (or bool) tensor of counted voxels, or None (all counted). An ignored
  voxel takes part in no sum at all (MONAI multiplies both ``s`` and ``g`` by the mask, which is the
  same thing for every formula here with a 0/1 mask).
- ``include_background=False`` drops channel 0 *after* the activation (MONAI's Dice family), except
  in :func:`focal_monai`, where MONAI drops it *before* the softmax.
- ``batch``: sum the per-class voxel sums over the batch before forming the ratio (one value per class)
  instead of one value per (batch item, class).
- ``reduction``: ``"none"`` returns the unreduced values (shape documented per function), ``"mean"`` /
  ``"sum"`` their mean / sum.

All results are float64 and differentiable with respect to ``input`` (the references can serve as
gradient oracles too; the distance maps are inputs, constants as in the papers).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "activate", "one_hot", "ignore_mask", "reduce",
    "ce", "wce", "bce_with_logits", "reciprocal_frequency_weights", "topk", "topk_threshold",
    "focal", "focal_monai", "dpce", "ss",
    "dice", "iou", "lovasz", "lovasz_set_function", "tversky", "gdice", "focal_tversky", "asym",
    "pgdice", "pgdice_simplified", "boundary", "hausdorff",
    "dice_ce", "ell", "ell_class_weights", "dice_focal", "dice_topk", "dice_boundary", "dice_hausdorff",
    "signed_distance", "caliva_penalty", "hausdorff_field", "distance_field_monai",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def activate(input: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """The probabilities ``s`` of the paper, float64: softmax over classes, sigmoid, or as given."""
    x = input.to(torch.float64)
    if activation == "softmax":
        # s_i^c = exp(x_i^c) / sum_k exp(x_i^k), written out (shifted by the max for range only)
        x = x - x.max(dim=1, keepdim=True).values.detach()
        e = torch.exp(x)
        return e / e.sum(dim=1, keepdim=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-x))
    if activation == "none":
        return x
    raise ValueError(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")


def one_hot(labels: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Dense one-hot ``(B, C, *spatial)`` float64 from labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.

    Voxels whose label is ``ignore_index`` (or out of ``[0, C)``) get an all-zero vector.
    """
    lab = labels
    if lab.ndim >= 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    lab = lab.long()
    out = torch.zeros((lab.shape[0], num_classes) + tuple(lab.shape[1:]), dtype=torch.float64)
    for c in range(num_classes):
        out[:, c] = (lab == c).to(torch.float64)
    if ignore_index is not None:
        out = out * (lab != ignore_index).unsqueeze(1).to(torch.float64)
    return out


def ignore_mask(target: torch.Tensor, ignore_index: Optional[int], num_classes: int) -> Optional[torch.Tensor]:
    """MONAI's ignore mask ``(B, *spatial)`` (1 = counted) for labels or a one-hot target.

    Labels ``(B, 1, *sp)``/``(B, *sp)`` (integer): voxels equal to ``ignore_index`` are ignored. One-hot
    ``(B, C, *sp)``: a class index ``0 <= ignore_index < C`` masks the voxels of that class (in every
    channel); any other value masks the voxels whose one-hot vector is all zero.
    """
    if ignore_index is None:
        return None
    is_onehot = target.ndim >= 3 and target.shape[1] == num_classes and (num_classes > 1 or target.is_floating_point())
    if not is_onehot:
        lab = target[:, 0] if (target.ndim >= 2 and target.shape[1] == 1 and target.ndim > 2) else target
        return (lab != ignore_index).to(torch.float64)
    t = target.to(torch.float64)
    if 0 <= ignore_index < num_classes:
        return 1.0 - t[:, ignore_index]
    return (t.sum(dim=1) > 0).to(torch.float64)


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def _mask_flat(mask: Optional[torch.Tensor], B: int, N: int) -> torch.Tensor:
    if mask is None:
        return torch.ones(B, N, dtype=torch.bool)
    return mask.reshape(B, N) > 0.5


def _channels(C: int, include_background: bool) -> List[int]:
    # MONAI ignores include_background=False for a single channel (with a warning).
    return list(range(C)) if include_background or C == 1 else list(range(1, C))


def _region_sums(
    s: torch.Tensor,
    g: torch.Tensor,
    mask: Optional[torch.Tensor],
    batch: bool,
    channels: Sequence[int],
) -> Dict[str, torch.Tensor]:
    """Naive per-(group, class) sums over the counted voxels.

    Groups are the batch items (``batch=False``) or the whole batch (``batch=True``). Returns a dict of
    ``(G, len(channels))`` tensors: ``gs`` Σ g·s, ``s`` Σ s, ``g`` Σ g, ``ss`` Σ s², ``gg`` Σ g²,
    ``fp`` Σ (1−g)·s, ``fn`` Σ g·(1−s), ``union`` Σ (g + s − g·s), ``n`` number of voxels.
    """
    B = s.shape[0]
    sf, gf = _flat(s), _flat(g.to(torch.float64))
    m = _mask_flat(mask, B, sf.shape[-1])
    groups = [list(range(B))] if batch else [[b] for b in range(B)]
    keys = ("gs", "s", "g", "ss", "gg", "fp", "fn", "union", "n")
    rows: Dict[str, list] = {k: [] for k in keys}
    for grp in groups:
        row: Dict[str, list] = {k: [] for k in keys}
        for c in channels:
            sc = torch.cat([sf[b, c][m[b]] for b in grp])  # the s_i^c of the counted voxels
            gc = torch.cat([gf[b, c][m[b]] for b in grp])
            row["gs"].append(torch.sum(gc * sc))
            row["s"].append(torch.sum(sc))
            row["g"].append(torch.sum(gc))
            row["ss"].append(torch.sum(sc * sc))
            row["gg"].append(torch.sum(gc * gc))
            row["fp"].append(torch.sum((1.0 - gc) * sc))
            row["fn"].append(torch.sum(gc * (1.0 - sc)))
            row["union"].append(torch.sum(gc + sc - gc * sc))
            row["n"].append(torch.tensor(float(sc.numel()), dtype=torch.float64))
        for k in keys:
            rows[k].append(torch.stack(row[k]))
    return {k: torch.stack(v) for k, v in rows.items()}


def _voxel_terms(s, g, mask, channels):
    """Per-voxel lists: for each counted voxel (flattened over the batch) the class vectors s_i, g_i."""
    B = s.shape[0]
    sf, gf = _flat(s), _flat(g.to(torch.float64))
    m = _mask_flat(mask, B, sf.shape[-1])
    S = torch.cat([sf[b][:, m[b]] for b in range(B)], dim=1)[list(channels)]  # (C', N_valid)
    G = torch.cat([gf[b][:, m[b]] for b in range(B)], dim=1)[list(channels)]
    return S, G


def _region_reduce(f: torch.Tensor, reduction: str, class_weight=None) -> torch.Tensor:
    """MONAI's reduction of a (G, C) per-class loss: weights multiply each class, then mean/sum/none."""
    if class_weight is not None:
        w = torch.as_tensor(class_weight, dtype=torch.float64)
        if w.ndim == 0:
            w = w.repeat(f.shape[1])
        f = f * w.reshape(1, -1)
    return reduce(f, reduction)


# --------------------------------------------------------------------------------------------------
# distribution-based losses
# --------------------------------------------------------------------------------------------------


def ce(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight=None,
    mask: Optional[torch.Tensor] = None,
    activation: str = "softmax",
    reduction: str = "mean",
    normalize: str = "weight",
) -> torch.Tensor:
    """Cross entropy, Eq. (1) (and Eq. (2) with ``weight``).

    Per voxel ``l_i = −Σ_c w_c g_i^c log s_i^c``. ``reduction="none"``: the ``(B, *spatial)`` map
    (ignored voxels 0); ``"sum"``: Σ_i l_i; ``"mean"``: Σ_i l_i divided by ``N`` (``normalize="voxels"``,
    the paper's 1/N, N = counted voxels) or by Σ_i Σ_c w_c g_i^c (``normalize="weight"``, the
    ``torch.nn.CrossEntropyLoss`` convention for class-index targets; the same as N without weights).
    """
    s = activate(input, activation)
    B, C = s.shape[:2]
    g = target.to(torch.float64)
    w = [1.0] * C if weight is None else [float(v) for v in torch.as_tensor(weight, dtype=torch.float64).reshape(-1)]
    if len(w) == 1:
        w = w * C
    loss = torch.zeros(s.shape[:1] + s.shape[2:], dtype=torch.float64)
    wsum = torch.zeros_like(loss)
    for c in range(C):
        loss = loss - w[c] * g[:, c] * torch.log(s[:, c])
        wsum = wsum + w[c] * g[:, c]
    if mask is not None:
        m = mask.to(torch.float64)
        loss = loss * m
        wsum = wsum * m
        n = m.sum()
    else:
        n = torch.tensor(float(loss.numel()), dtype=torch.float64)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (wsum.sum() if normalize == "weight" else n)
    raise ValueError(f"bad reduction {reduction!r}")


def wce(input, target, weight, **kwargs) -> torch.Tensor:
    """Weighted cross entropy, Eq. (2): :func:`ce` with per-class weights ``w_c``."""
    return ce(input, target, weight=weight, **kwargs)


def reciprocal_frequency_weights(target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The paper's WCE weights: ``w_c = 1 / f_c`` with ``f_c = n_c / N`` the frequency of class ``c``
    among the counted voxels (a class that never occurs gets weight 0 here; callers may choose
    otherwise). Returned unnormalised, float64 ``(C,)``."""
    g = _flat(target.to(torch.float64))
    B, C, N = g.shape
    m = _mask_flat(mask, B, N)
    total = float(m.sum())
    w = torch.zeros(C, dtype=torch.float64)
    for c in range(C):
        n_c = float(sum(g[b, c][m[b]].sum() for b in range(B)))
        w[c] = total / n_c if n_c > 0 else 0.0
    return w


def bce_with_logits(input, target, *, pos_weight=None, reduction="mean") -> torch.Tensor:
    """Binary CE on logits, per element ``−[w_p g log σ(x) + (1 − g) log(1 − σ(x))]``
    (``torch.nn.BCEWithLogitsLoss``, what MONAI's DiceCELoss uses for one channel)."""
    p = activate(input, "sigmoid")
    g = target.to(torch.float64)
    wp = 1.0 if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float64).reshape(
        (1, -1) + (1,) * (p.ndim - 2))
    loss = -(wp * g * torch.log(p) + (1.0 - g) * torch.log(1.0 - p))
    return reduce(loss, reduction)


def _voxel_ce(input, target, mask, activation):
    """Per counted voxel (flattened over the batch, batch-major) ``−Σ_c g_i^c log s_i^c``."""
    s = activate(input, activation)
    S, G = _voxel_terms(s, target, mask, range(s.shape[1]))
    vals = []
    for i in range(S.shape[1]):
        v = torch.zeros((), dtype=torch.float64)
        for c in range(S.shape[0]):
            if float(G[c, i].detach()) != 0.0:
                v = v - G[c, i] * torch.log(S[c, i])
        vals.append(v)
    return torch.stack(vals) if vals else torch.zeros(0, dtype=torch.float64)


def topk(input, target, *, k: float = 10.0, mask=None, activation="softmax") -> torch.Tensor:
    """TopK loss, Eq. (4), percentage form with nnU-Net semantics.

    The per-voxel CE values over the whole batch (counted voxels only) are fully sorted in decreasing
    order and the mean of the first ``int(N · k / 100)`` (at least one) is returned.
    """
    vals = _voxel_ce(input, target, mask, activation)
    n = max(1, int(vals.numel() * k / 100))
    order = torch.sort(vals.detach(), descending=True, stable=True).indices
    return vals[order[:n]].mean()


def topk_threshold(input, target, *, t: float, mask=None, activation="softmax") -> torch.Tensor:
    """TopK loss, Eq. (3), threshold form: the mean of ``−log s_i^c`` over the (voxel, class) pairs with
    ``g_i = c`` and ``s_i^c < t``; 0 when there are none."""
    s = activate(input, activation)
    S, G = _voxel_terms(s, target, mask, range(s.shape[1]))
    num = torch.zeros((), dtype=torch.float64)
    den = 0.0
    for i in range(S.shape[1]):
        for c in range(S.shape[0]):
            if float(G[c, i].detach()) > 0.5 and float(S[c, i].detach()) < t:
                num = num - torch.log(S[c, i])
                den += 1.0
    return num / den if den > 0 else num * 0.0


def focal(input, target, *, gamma: float = 2.0, mask=None, activation="softmax") -> torch.Tensor:
    """Focal loss, Eq. (5): ``−1/N Σ_c Σ_i (1 − s_i^c)^γ g_i^c log s_i^c`` (N = counted voxels)."""
    s = activate(input, activation)
    S, G = _voxel_terms(s, target, mask, range(s.shape[1]))
    total = torch.zeros((), dtype=torch.float64)
    for c in range(S.shape[0]):
        total = total - torch.sum((1.0 - S[c]) ** gamma * G[c] * torch.log(S[c]))
    return total / S.shape[1]


def focal_monai(
    input,
    target,
    *,
    gamma: float = 2.0,
    alpha=None,
    weight=None,
    use_softmax: bool = False,
    include_background: bool = True,
    mask=None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss in MONAI's form (``monai.losses.FocalLoss``; Lin et al. for sigmoid, Eq. (5) for softmax).

    ``input`` are logits. Channel 0 is dropped *before* the activation when ``include_background=False``.
    Per element ``(b, c, i)``:

    - softmax: ``−α_c (1 − s_i^c)^γ g_i^c log s_i^c`` with ``α_c = (1 − α, α, α, ...)`` for a scalar α
      (ignored, as in MONAI, when the background is excluded) or the given per-class sequence;
    - sigmoid: ``α_t (1 − p_t)^γ · BCE(x, g)`` with ``p = σ(x)``, ``1 − p_t = σ(−x(2g − 1))``
      (``= 1 − p`` for g = 1, ``p`` for g = 0), ``α_t = α g + (1 − α)(1 − g)`` for a scalar,
      ``α_c`` where g = 1 and 1 elsewhere for a sequence;

    then times ``weight[c]``, times the mask. ``reduction``: ``"none"`` the ``(B, C', *sp)`` map,
    ``"mean"`` Σ/(B·C'·N) without a mask and Σ/Σmask with one, ``"sum"`` Σ_{b,c} of the per-(b, c)
    spatial means (Σ/Σ_b mask per item with a mask).
    """
    x = input.to(torch.float64)
    g = target.to(torch.float64)
    chans = _channels(x.shape[1], include_background)
    x, g = x[:, chans], g[:, chans]
    C = x.shape[1]
    loss = torch.zeros_like(x)
    if use_softmax:
        s = activate(x, "softmax")
        if alpha is not None and not include_background and isinstance(alpha, (int, float)):
            alpha = None
        if alpha is None:
            a = [1.0] * C
        elif isinstance(alpha, (int, float)):
            a = [1.0 - float(alpha)] + [float(alpha)] * (C - 1)
        else:
            a = [float(v) for v in alpha]
        for c in range(C):
            loss[:, c] = -a[c] * (1.0 - s[:, c]) ** gamma * g[:, c] * torch.log(s[:, c])
    else:
        p = activate(x, "sigmoid")
        for c in range(C):
            xc, gc, pc = x[:, c], g[:, c], p[:, c]
            bce = -(gc * torch.log(pc) + (1.0 - gc) * torch.log(1.0 - pc))
            one_minus_pt = 1.0 / (1.0 + torch.exp(xc * (2.0 * gc - 1.0)))  # σ(−x(2g − 1))
            if alpha is None:
                at = torch.ones_like(gc)
            elif isinstance(alpha, (int, float)):
                at = float(alpha) * gc + (1.0 - float(alpha)) * (1.0 - gc)
            else:
                at = torch.where(gc == 1, torch.full_like(gc, float(alpha[c])), torch.ones_like(gc))
            loss[:, c] = at * one_minus_pt ** gamma * bce
    if weight is not None:
        w = torch.as_tensor(weight, dtype=torch.float64)
        w = w.repeat(C) if w.ndim == 0 else w
        for c in range(C):
            loss[:, c] = loss[:, c] * w[c]
    if mask is not None:
        loss = loss * mask.to(torch.float64).unsqueeze(1)
    if reduction == "none":
        return loss
    B = loss.shape[0]
    if reduction == "mean":
        return loss.sum() / (mask.to(torch.float64).sum() if mask is not None else loss.numel())
    if reduction == "sum":
        total = torch.zeros((), dtype=torch.float64)
        for b in range(B):
            n_b = mask[b].to(torch.float64).sum() if mask is not None else float(loss[b, 0].numel())
            for c in range(C):
                total = total + loss[b, c].sum() / n_b
        return total
    raise ValueError(f"bad reduction {reduction!r}")


def dpce(input, target, D, *, mask=None, activation="softmax", reduction="mean") -> torch.Tensor:
    """Distance-penalised CE, Eq. (6): ``−1/N Σ_c Σ_i (1 + D_i^c) g_i^c log s_i^c``.

    ``D``: the penalty map, ``(B, C, *sp)`` per class or ``(B, *sp)`` shared by all classes (a constant
    here; the test builds it as the class documents). ``reduction="none"``: the ``(B, *sp)`` map.
    """
    s = activate(input, activation)
    g = target.to(torch.float64)
    Dm = D.to(torch.float64)
    if Dm.ndim == s.ndim - 1:
        Dm = Dm.unsqueeze(1).expand_as(s)
    loss = torch.zeros(s.shape[:1] + s.shape[2:], dtype=torch.float64)
    for c in range(s.shape[1]):
        loss = loss - (1.0 + Dm[:, c]) * g[:, c] * torch.log(s[:, c])
    m = torch.ones_like(loss) if mask is None else mask.to(torch.float64)
    loss = loss * m
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / m.sum()


# --------------------------------------------------------------------------------------------------
# region-based losses
# --------------------------------------------------------------------------------------------------


def ss(
    input, target, *, w: float = 0.05, eps: float = 1e-5, smooth_nr: float = 0.0, mask=None, activation="softmax",
    include_background=True, batch=False, class_sum=True, reduction="mean",
) -> torch.Tensor:
    """Sensitivity-specificity loss, Eq. (7)::

        w · Σ (g − s)² g / (Σ g + ε) + (1 − w) · Σ (g − s)² (1 − g) / (Σ (1 − g) + ε)

    (``smooth_nr`` is added to both numerators; 0 in the paper.)

    ``class_sum=True``: the sums run over classes and voxels as in the paper (one value per group);
    ``False``: one value per (group, class). Groups: batch items, or the whole batch with ``batch``.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    B = s.shape[0]
    sf, gf = _flat(s), _flat(target.to(torch.float64))
    m = _mask_flat(mask, B, sf.shape[-1])
    groups = [list(range(B))] if batch else [[b] for b in range(B)]
    out = []
    for grp in groups:
        sens_n, sens_d, spec_n, spec_d = [], [], [], []
        for c in chans:
            sc = torch.cat([sf[b, c][m[b]] for b in grp])
            gc = torch.cat([gf[b, c][m[b]] for b in grp])
            sens_n.append(torch.sum((gc - sc) ** 2 * gc))
            sens_d.append(torch.sum(gc))
            spec_n.append(torch.sum((gc - sc) ** 2 * (1.0 - gc)))
            spec_d.append(torch.sum(1.0 - gc))
        if class_sum:
            vals = [w * (sum(sens_n) + smooth_nr) / (sum(sens_d) + eps)
                    + (1 - w) * (sum(spec_n) + smooth_nr) / (sum(spec_d) + eps)]
        else:
            vals = [w * (a + smooth_nr) / (b_ + eps) + (1 - w) * (c_ + smooth_nr) / (d + eps)
                    for a, b_, c_, d in zip(sens_n, sens_d, spec_n, spec_d)]
        out.append(torch.stack(vals))
    return reduce(torch.stack(out), reduction)


def dice(
    input, target, *, mask=None, activation="softmax", include_background=True, batch=False,
    squared_pred=False, jaccard=False, smooth_nr=1e-5, smooth_dr=1e-5, weight=None, reduction="mean",
) -> torch.Tensor:
    """Dice loss, Eqs. (9) (default) and (8) (``squared_pred``), per class, in MONAI's form::

        f_c = 1 − (2 Σ g s + smooth_nr) / (Σ g + Σ s + smooth_dr)            (Eq. 9)
        f_c = 1 − (2 Σ g s + smooth_nr) / (Σ g² + Σ s² + smooth_dr)          (Eq. 8)
        jaccard: the denominator D becomes 2 (D − Σ g s)   (so 1 − (2I + nr) / (2U + dr))

    One value per (batch item, class), or per class with ``batch``; ``weight`` multiplies each class
    (MONAI's ``weight``); ``reduction="none"`` returns the ``(G, C')`` tensor.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    inter = S["gs"]
    den = S["gg"] + S["ss"] if squared_pred else S["g"] + S["s"]
    if jaccard:
        den = 2.0 * (den - inter)
    f = 1.0 - (2.0 * inter + smooth_nr) / (den + smooth_dr)
    return _region_reduce(f, reduction, weight)


def iou(
    input, target, *, mask=None, activation="softmax", include_background=True, batch=False,
    smooth_nr=1e-5, smooth_dr=1e-5, weight=None, reduction="mean",
) -> torch.Tensor:
    """IoU loss, Eq. (10), per class: ``1 − (Σ g s + smooth_nr) / (Σ (g + s − g s) + smooth_dr)``."""
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    f = 1.0 - (S["gs"] + smooth_nr) / (S["union"] + smooth_dr)
    return _region_reduce(f, reduction, weight)


def lovasz_set_function(A: Sequence[int], fg: Sequence[bool]) -> float:
    """The Jaccard loss of the mispredicted set ``A`` for one class (Berman et al.):
    ``Δ(A) = |A| / |{g = c} ∪ A|`` (0 for the empty set)."""
    A = set(A)
    if not A:
        return 0.0
    gt = {i for i, f in enumerate(fg) if f}
    return len(A) / len(gt | A)


def _lovasz_class(s_c: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Eqs. (11)-(13) for one class: the Lovász extension of Δ at the error vector ``m``."""
    fgl = [bool(v) for v in fg.tolist()]
    # Eq. (11): m_i = 1 − s_i^c where c is the true class, s_i^c otherwise
    m = torch.where(fg, 1.0 - s_c, s_c)
    # π orders m decreasingly (ties in any order: the extension does not depend on it)
    md = m.detach()
    order = sorted(range(len(fgl)), key=lambda i: -float(md[i]))
    total = torch.zeros((), dtype=torch.float64)
    prev = 0.0
    for i in range(len(order)):
        cur = lovasz_set_function(order[: i + 1], fgl)  # Δ({π_1..π_i})
        d_i = cur - prev  # Eq. (13): d_i(m) = Δ({π_1..π_i}) − Δ({π_1..π_{i−1}})
        total = total + m[order[i]] * d_i
        prev = cur
    return total


def lovasz(
    input, labels, *, num_classes=None, ignore_index=None, activation="softmax", per_image=False,
    classes="present", include_background=True,
) -> torch.Tensor:
    """Lovász-softmax loss, Eqs. (11)-(13) (Berman et al. 2018, their ``lovasz_softmax``).

    ``labels``: integer labels ``(B, *sp)`` or ``(B, 1, *sp)``; voxels equal to ``ignore_index`` are
    dropped. For each class (``classes="present"``: those occurring among the kept voxels; ``"all"``;
    or a list) the Lovász extension of the Jaccard loss is evaluated by the explicit loop of Eq. (13);
    the loss is the mean over classes, over the whole batch, or (``per_image``) per image and then the
    mean over images. No class to average gives 0.
    """
    s = activate(input, activation)
    B, C = s.shape[:2]
    lab = labels[:, 0] if labels.ndim == s.ndim else labels
    lab = lab.reshape(B, -1).long()
    sf = _flat(s)
    keep = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else lab != ignore_index

    def one(bs):
        sv = torch.cat([sf[b][:, keep[b]] for b in bs], dim=1)
        lv = torch.cat([lab[b][keep[b]] for b in bs])
        if classes == "present":
            cl = [c for c in range(C) if bool((lv == c).any())]
        elif classes == "all":
            cl = list(range(C))
        else:
            cl = list(classes)
        if not include_background:
            cl = [c for c in cl if c != 0]
        if sv.shape[1] == 0 or not cl:
            return sf.sum() * 0.0
        return torch.stack([_lovasz_class(sv[c], lv == c) for c in cl]).mean()

    if per_image:
        return torch.stack([one([b]) for b in range(B)]).mean()
    return one(list(range(B)))


def tversky(
    input, target, *, alpha=0.5, beta=0.5, mask=None, activation="softmax", include_background=True,
    batch=False, smooth_nr=1e-5, smooth_dr=1e-5, reduction="mean",
) -> torch.Tensor:
    """Tversky loss, Eq. (14), per class (MONAI's form): ``α`` weighs the false positives
    Σ (1 − g) s, ``β`` the false negatives Σ g (1 − s)::

        1 − (Σ g s + smooth_nr) / (Σ g s + α Σ (1 − g) s + β Σ g (1 − s) + smooth_dr)
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    f = 1.0 - (S["gs"] + smooth_nr) / (S["gs"] + alpha * S["fp"] + beta * S["fn"] + smooth_dr)
    return reduce(f, reduction)


def _gd_weights(gsum: torch.Tensor, w_type: str, absent: str) -> torch.Tensor:
    """Generalised-Dice class weights from Σ g per (group, class): ``1/(Σg)²`` (square), ``1/Σg``
    (simple) or 1 (uniform). A class with Σ g = 0 gets (``absent="max"``, MONAI) the largest finite weight
    of its row (of the whole tensor with one row, i.e. batch=True), or (``"zero"``) 0."""
    w = torch.zeros_like(gsum)
    G, C = gsum.shape
    for r in range(G):
        for c in range(C):
            v = float(gsum[r, c])
            if v == 0.0:
                continue
            w[r, c] = 1.0 / (v * v) if w_type == "square" else (1.0 / v if w_type == "simple" else 1.0)
    if w_type == "uniform":
        w = torch.ones_like(gsum)
    elif absent == "max":
        for r in range(G):
            mx = float(w[r].max())
            for c in range(C):
                if float(gsum[r, c]) == 0.0:
                    w[r, c] = mx
    return w


def _gd_smooth_scale(gsum: torch.Tensor, w: torch.Tensor, r: int, relative: bool) -> float:
    """The factor of the smoothing terms in row ``r``: 1 (MONAI), or with ``relative`` the weighted target
    volume ``W = Σ_c w_c Σ_i g_i^c`` (1 when it is 0, every class absent)."""
    if not relative:
        return 1.0
    W = sum(float(w[r, c]) * float(gsum[r, c]) for c in range(w.shape[1]))
    return W if W > 0 else 1.0


def gdice(
    input, target, *, mask=None, activation="softmax", include_background=True, batch=False,
    w_type="square", smooth_nr=1e-5, smooth_dr=1e-5, absent="max", smooth_relative=False, reduction="mean",
) -> torch.Tensor:
    """Generalised Dice loss, Eq. (15) with ``w_c = 1/(Σ_i g_i^c)²`` (MONAI's form)::

        1 − (2 Σ_c w_c Σ_i g s + smooth_nr · W) / (Σ_c w_c Σ_i (g + s) + smooth_dr · W)

    ``W = 1`` (MONAI), or with ``smooth_relative`` ``W = Σ_c w_c Σ_i g_i^c`` (the paper's configuration:
    the smoothing stays relative to the weighted sums whatever the patch size; Eq. 15 itself has none).
    One value per batch item (or one with ``batch``). The weights are constants (no gradient).
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    w = _gd_weights(S["g"].detach(), w_type, absent)
    out = []
    for r in range(w.shape[0]):
        num = 2.0 * sum(w[r, c] * S["gs"][r, c] for c in range(w.shape[1]))
        den = sum(w[r, c] * (S["g"][r, c] + S["s"][r, c]) for c in range(w.shape[1]))
        W = _gd_smooth_scale(S["g"].detach(), w, r, smooth_relative)
        out.append(1.0 - (num + smooth_nr * W) / (den + smooth_dr * W))
    return reduce(torch.stack(out), reduction)


def focal_tversky(
    input, target, *, alpha=0.3, beta=0.7, gamma=4.0 / 3.0, weight=None, per_class_power=True, reduction="mean",
    **kw
) -> torch.Tensor:
    """Focal Tversky loss.

    ``per_class_power=True``: ``(L_Tversky,c)^(1/γ)`` per (group, class), times ``weight[c]``, then reduced
    (Abraham and Khan's multi-class reading: they sum the per-class terms); ``reduction="none"`` gives
    ``(G, C')``.

    ``per_class_power=False``: Eq. (16) as printed, ``(L_Tversky)^(1/γ)`` with ``L_Tversky`` the mean over
    classes of ``weight[c] · L_Tversky,c``, one value per group; ``reduction="none"`` gives ``(G, 1)``.
    """
    t = tversky(input, target, alpha=alpha, beta=beta, reduction="none", **kw)
    if per_class_power:
        return _region_reduce(t ** (1.0 / gamma), reduction, weight)
    rows = []
    for r in range(t.shape[0]):
        wt = [1.0] * t.shape[1] if weight is None or t.shape[1] == 1 else (
            [float(weight)] * t.shape[1] if np.ndim(weight) == 0 else [float(v) for v in weight])
        mean_t = sum(wt[c] * t[r, c] for c in range(t.shape[1])) / t.shape[1]
        rows.append(torch.stack([mean_t ** (1.0 / gamma)]))
    return reduce(torch.stack(rows), reduction)


def asym(input, target, *, beta=1.5, weight=None, reduction="mean", **kw) -> torch.Tensor:
    """Asymmetric similarity loss, Eq. (17), ``1 − F_β`` per class::

        1 − Σ g s / (Σ g s + β²/(1+β²) Σ g (1 − s) + 1/(1+β²) Σ (1 − g) s)

    written out here (not via :func:`tversky`) so the Tversky-special-case claim can be tested.
    """
    s = activate(input, kw.pop("activation", "softmax"))
    chans = _channels(s.shape[1], kw.pop("include_background", True))
    S = _region_sums(s, target, kw.pop("mask", None), kw.pop("batch", False), chans)
    nr, dr = kw.pop("smooth_nr", 1e-5), kw.pop("smooth_dr", 1e-5)
    if kw:
        raise TypeError(f"unexpected arguments {sorted(kw)}")
    b2 = beta * beta
    f = 1.0 - (S["gs"] + nr) / (S["gs"] + b2 / (1.0 + b2) * S["fn"] + 1.0 / (1.0 + b2) * S["fp"] + dr)
    return _region_reduce(f, reduction, weight)


def pgdice(
    input, target, *, k=2.5, mask=None, activation="softmax", include_background=True, batch=False,
    smooth_nr=1e-5, smooth_dr=1e-5, absent="max", smooth_relative=False, reduction="mean",
) -> torch.Tensor:
    """Penalty generalised Dice loss, Eq. (18), from its *first line*::

        1 − (2 Σ_c w_c Σ g s + nr) / (Σ_c w_c Σ (g + s) + k Σ_c w_c Σ (1 − g) s + k Σ_c w_c Σ g (1 − s) + dr)

    with the generalised-Dice weights ``w_c = 1/(Σ g)²`` (absent classes as in :func:`gdice`). With
    ``nr == dr`` this equals ``1 − GD/(1 + k(1 − GD))`` (the last line of Eq. 18, see
    :func:`pgdice_simplified`); with different smooth terms the two differ by ``k (dr − nr)`` in the
    denominator. ``smooth_relative`` multiplies both smooth terms by ``W`` as in :func:`gdice`.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    w = _gd_weights(S["g"].detach(), "square", absent)
    out = []
    for r in range(w.shape[0]):
        tp = sum(w[r, c] * S["gs"][r, c] for c in range(w.shape[1]))
        vol = sum(w[r, c] * (S["g"][r, c] + S["s"][r, c]) for c in range(w.shape[1]))
        fp = sum(w[r, c] * S["fp"][r, c] for c in range(w.shape[1]))
        fn = sum(w[r, c] * S["fn"][r, c] for c in range(w.shape[1]))
        W = _gd_smooth_scale(S["g"].detach(), w, r, smooth_relative)
        out.append(1.0 - (2.0 * tp + smooth_nr * W) / (vol + k * fp + k * fn + smooth_dr * W))
    return reduce(torch.stack(out), reduction)


def pgdice_simplified(input, target, *, k=2.5, reduction="mean", **kw) -> torch.Tensor:
    """The last line of Eq. (18): ``1 − GD/(1 + k(1 − GD))`` with GD = 1 − :func:`gdice`."""
    gd = 1.0 - gdice(input, target, reduction="none", **kw)
    return reduce(1.0 - gd / (1.0 + k * (1.0 - gd)), reduction)


# --------------------------------------------------------------------------------------------------
# boundary-based losses
# --------------------------------------------------------------------------------------------------


def boundary(
    input, target, phi, *, mask=None, activation="softmax", include_background=False, voxel_mean=True,
    reduction="mean",
) -> torch.Tensor:
    """Boundary loss, Eq. (20): ``Σ_Ω φ_G(p) s_θ(p)`` per (batch item, class), ``φ`` the signed distance
    of the class's ground truth (:func:`signed_distance`), a constant.

    ``voxel_mean=True`` divides by the number of counted voxels (Kervadec et al.'s code takes the mean);
    ``reduction="none"`` returns ``(B, C')``. ``target`` is unused (φ carries it) and kept for symmetry.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    B = s.shape[0]
    sf, pf = _flat(s), _flat(phi.to(torch.float64))
    m = _mask_flat(mask, B, sf.shape[-1])
    rows = []
    for b in range(B):
        row = []
        for c in chans:
            v = torch.sum(pf[b, c][m[b]] * sf[b, c][m[b]])
            row.append(v / max(int(m[b].sum()), 1) if voxel_mean else v)
        rows.append(torch.stack(row))
    return reduce(torch.stack(rows), reduction)


def hausdorff(
    input, target, d_g, d_s, *, alpha=2.0, mask=None, activation="softmax", include_background=False,
    batch=False, reduction="mean",
) -> torch.Tensor:
    """Hausdorff-distance loss, Eq. (21), in Karimi and Salcudean's / MONAI's form::

        mean_i (s_i^c − g_i^c)² · (d_G,i^α + d_S,i^α)        per (batch item, class) or per class (batch)

    (MONAI squares the error; the paper's Eq. 21 writes it without the square.) ``d_g``/``d_s``:
    ``(B, C, *sp)`` distance fields of the target and of the thresholded prediction
    (:func:`hausdorff_field`), constants. ``reduction="none"`` returns ``(G, C')``.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    B = s.shape[0]
    sf, gf = _flat(s), _flat(target.to(torch.float64))
    dg, ds = _flat(d_g.to(torch.float64)), _flat(d_s.to(torch.float64))
    m = _mask_flat(mask, B, sf.shape[-1])
    groups = [list(range(B))] if batch else [[b] for b in range(B)]
    rows = []
    for grp in groups:
        row = []
        for c in chans:
            e = torch.cat([(sf[b, c][m[b]] - gf[b, c][m[b]]) ** 2 for b in grp])
            dist = torch.cat([dg[b, c][m[b]] ** alpha + ds[b, c][m[b]] ** alpha for b in grp])
            row.append(torch.sum(e * dist) / e.numel())
        rows.append(torch.stack(row))
    return reduce(torch.stack(rows), reduction)


# --------------------------------------------------------------------------------------------------
# compound losses
# --------------------------------------------------------------------------------------------------


def dice_ce(
    input, target, *, lambda_dice=1.0, lambda_ce=1.0, ce_weight=None, ce_normalize="weight", mask=None,
    reduction="mean", **dice_kw,
) -> torch.Tensor:
    """Eq. (22): ``λ_dice · Dice + λ_ce · CE`` (MONAI's DiceCELoss: CE on the logits over all channels,
    binary CE with logits for one channel; Dice with ``dice_kw``). Scalar reductions only."""
    d = dice(input, target, mask=mask, reduction=reduction, **dice_kw)
    if input.shape[1] == 1:
        c = bce_with_logits(input, target, pos_weight=ce_weight, reduction=reduction)
    else:
        c = ce(input, target, weight=ce_weight, mask=mask, reduction=reduction, normalize=ce_normalize)
    return lambda_dice * d + lambda_ce * c


def ell_class_weights(target: torch.Tensor, mask=None) -> torch.Tensor:
    """Wong et al.'s label weights ``w_l = ((Σ_k f_k) / f_l)^0.5``, f_k = voxel count of label k
    (an absent label gets 0)."""
    g = _flat(target.to(torch.float64))
    B, C, N = g.shape
    m = _mask_flat(mask, B, N)
    f = [float(sum(g[b, c][m[b]].sum() for b in range(B))) for c in range(C)]
    tot = sum(f)
    return torch.tensor([math.sqrt(tot / fc) if fc > 0 else 0.0 for fc in f], dtype=torch.float64)


def ell(
    input, target, *, w_dice=0.8, w_ce=0.2, gamma_dice=0.3, gamma_ce=0.3, class_weight=None, eps=1.0,
    mask=None, activation="softmax", include_background=True, batch=False,
) -> torch.Tensor:
    """Exponential logarithmic loss, Eq. (23) (Wong et al. 2018)::

        w_dice · E_c[(−log Dice_c)^γ_dice] + w_ce · E_i[w_{g_i} (−log s_i^{g_i})^γ_ce]
        Dice_c = (2 Σ_i g s + ε) / (Σ_i (g + s) + ε)

    The first mean runs over the (group, class) Dice values, the second over the counted voxels
    (``Σ_c g_i^c w_c (−log s_i^c)^γ_ce`` per voxel, all classes). ``class_weight`` None means 1.
    """
    s = activate(input, activation)
    chans = _channels(s.shape[1], include_background)
    S = _region_sums(s, target, mask, batch, chans)
    dsc = (2.0 * S["gs"] + eps) / (S["g"] + S["s"] + eps)
    l_dice = ((-torch.log(dsc)) ** gamma_dice).mean()
    Sv, Gv = _voxel_terms(s, target, mask, range(s.shape[1]))
    w = torch.ones(s.shape[1], dtype=torch.float64) if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float64)
    l_ce = torch.zeros((), dtype=torch.float64)
    for c in range(Sv.shape[0]):
        l_ce = l_ce + torch.sum(Gv[c] * w[c] * (-torch.log(Sv[c])) ** gamma_ce)
    l_ce = l_ce / Sv.shape[1]
    return w_dice * l_dice + w_ce * l_ce


def dice_focal(
    input, target, *, lambda_dice=1.0, lambda_focal=1.0, gamma=2.0, alpha=None, weight=None,
    use_softmax_focal=False, mask=None, include_background=True, reduction="mean", **dice_kw,
) -> torch.Tensor:
    """Eq. (24): ``λ_dice · Dice + λ_focal · Focal`` in MONAI's DiceFocalLoss form: the Dice term with
    ``dice_kw`` (its activation), the focal term on the logits in its *sigmoid* form whatever the Dice
    activation (MONAI builds its FocalLoss without ``use_softmax``) unless ``use_softmax_focal``;
    ``weight`` goes to both terms."""
    d = dice(input, target, mask=mask, include_background=include_background, weight=weight,
             reduction=reduction, **dice_kw)
    f = focal_monai(input, target, gamma=gamma, alpha=alpha, weight=weight, use_softmax=use_softmax_focal,
                    include_background=include_background, mask=mask, reduction=reduction)
    return lambda_dice * d + lambda_focal * f


def dice_topk(input, target, *, k=10.0, lambda_dice=1.0, lambda_topk=1.0, mask=None, **dice_kw) -> torch.Tensor:
    """Eq. (25): ``Dice + TopK`` (Eq. 9 + Eq. 4)."""
    act = dice_kw.get("activation", "softmax")
    return lambda_dice * dice(input, target, mask=mask, **dice_kw) + lambda_topk * topk(
        input, target, k=k, mask=mask, activation=act)


def dice_boundary(input, target, phi, *, alpha, mask=None, dice_kw=None, bd_kw=None) -> torch.Tensor:
    """Kervadec et al.'s schedule: ``α · Dice + (1 − α) · BD``."""
    return alpha * dice(input, target, mask=mask, **(dice_kw or {})) + (1.0 - alpha) * boundary(
        input, target, phi, mask=mask, **(bd_kw or {}))


def dice_hausdorff(input, target, d_g, d_s, *, mask=None, dice_kw=None, hd_kw=None) -> torch.Tensor:
    """Karimi and Salcudean's weighting: ``HD + λ · Dice`` with ``λ = HD / Dice`` evaluated and detached
    (no gradient through λ), so both terms carry the same magnitude."""
    d = dice(input, target, mask=mask, **(dice_kw or {}))
    h = hausdorff(input, target, d_g, d_s, mask=mask, **(hd_kw or {}))
    lam = (h / d).detach()
    return h + lam * d


# --------------------------------------------------------------------------------------------------
# distance maps (scipy's exact EDT as the oracle)
# --------------------------------------------------------------------------------------------------


def _scipy_edt(mask: np.ndarray, spacing=None) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=spacing)


def signed_distance(mask, spacing=None) -> np.ndarray:
    """Kervadec et al.'s level-set map φ_G of one binary mask (spatial dims only), float64::

        φ = edt(¬g) · ¬g − (edt(g) − 1) · g

    positive outside, ``≤ 0`` inside (with unit spacing the boundary voxels inside get 0; the shift is
    1 whatever the spacing, as in Kervadec et al.'s code). An empty mask (absent class) gives all zeros.
    A full mask has no background, so ``edt(g)`` is undefined (scipy returns garbage); here, as
    ``fastloss.signed_distance`` documents, the image is treated as surrounded by background: the
    mask is padded by one background voxel on every side before the transform, then cropped.
    """
    g = np.asarray(mask) > 0
    if not g.any():
        return np.zeros(g.shape)
    if g.all():
        gp = np.pad(g, 1, constant_values=False)
        inner = tuple(slice(1, -1) for _ in range(g.ndim))
        return -(_scipy_edt(gp, spacing)[inner] - 1.0)
    neg = ~g
    return _scipy_edt(neg, spacing) * neg - (_scipy_edt(g, spacing) - 1.0) * g


def caliva_penalty(mask, spacing=None) -> np.ndarray:
    """The DPCE penalty ``D`` of one binary class mask G (Eq. 6, as ``DistancePenalizedCELoss``
    documents it): with ``d = edt(G)`` (distance of each voxel of G to the nearest voxel outside G),
    ``M = max_G d``, ``m = min_G d``: ``D = (M − d)/(M − m)`` on G (1 when M = m), 0 outside G; a class
    covering the whole image (no boundary) or absent gives 0."""
    g = np.asarray(mask) > 0
    if not g.any() or g.all():
        return np.zeros(g.shape)
    d = _scipy_edt(g, spacing)
    M, m = d[g].max(), d[g].min()
    D = np.zeros(g.shape)
    D[g] = (M - d[g]) / (M - m) if M > m else 1.0
    return D


def hausdorff_field(mask, spacing=None) -> np.ndarray:
    """MONAI's Hausdorff distance field of one binary mask: ``edt(fg) + edt(bg)``, all zeros when the
    mask is all one value (every voxel foreground, or every voxel background)."""
    fg = np.asarray(mask) > 0.5
    if not fg.any() or fg.all():
        return np.zeros(fg.shape)
    return _scipy_edt(fg, spacing) + _scipy_edt(~fg, spacing)


def distance_field_monai(x: torch.Tensor, spacing=None) -> torch.Tensor:
    """:func:`hausdorff_field` for every (batch item, channel) of ``(B, C, *sp)`` (``x > 0.5`` is
    foreground), float64 tensor."""
    a = x.detach().to(torch.float64).cpu().numpy()
    out = np.zeros_like(a)
    for b in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[b, c] = hausdorff_field(a[b, c] > 0.5, spacing)
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------ Boundary DoU
def boundary_dou(input: torch.Tensor, labels: torch.Tensor, *, alpha_max: Optional[float] = 0.8,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Boundary DoU (Sun et al., MICCAI 2023, Eqs. 3-5), written naively from the paper: the softmax of
    ``input`` ``(B, C, *sp)`` (2D or 3D) against integer ``labels`` ``(B, *sp)``; for each class ``c`` the
    target mask ``G`` over the whole batch, its boundary voxels counted one by one (a voxel of ``G`` with a face
    neighbour outside ``G`` or outside the image), ``alpha = 1 - 2 C/S`` (with ``s``), capped at ``alpha_max``,
    and ``(|G ∪ P| - |G ∩ P|) / (|G ∪ P| - alpha |G ∩ P|)`` in the soft form ``|G ∪ P| = Σp² + Σg - Σpg``;
    the mean over classes."""
    p = torch.softmax(input.to(torch.float64), dim=1)
    lab = labels.detach().cpu().numpy()
    B, C = input.shape[:2]
    sp = lab.shape[1:]
    losses = []
    for c in range(C):
        g_np = lab == c
        boundary = 0
        for b in range(B):
            for idx in zip(*np.nonzero(g_np[b])):
                for axis in range(len(sp)):
                    hit = False
                    for step in (-1, 1):
                        j = list(idx)
                        j[axis] += step
                        if not 0 <= j[axis] < sp[axis] or not g_np[b][tuple(j)]:
                            hit = True
                    if hit:
                        break
                else:
                    continue
                boundary += 1
        size = float(g_np.sum())
        alpha = 1.0 - (boundary + smooth) / (size + smooth)
        alpha = 2.0 * alpha - 1.0
        if alpha_max is not None:
            alpha = min(alpha, alpha_max)
        g = torch.from_numpy(g_np).to(p.device, torch.float64)
        pc = p[:, c]
        inter = (pc * g).sum()
        union = (pc * pc).sum() + (g * g).sum() - inter
        losses.append((union - inter + smooth) / (union - alpha * inter + smooth))
    return torch.stack(losses).mean()
